"""Two real JAX processes, started through the CLI's multi-host flags (gloo CPU collectives on
127.0.0.1, 2 fake devices each), train to the same parameters as this single process (4 fake
devices) with the same global batch."""

import importlib.util
import os
import re
import socket
import subprocess
import sys

import chex
import jax
import pytest
from train_testing import CACHE_ENV, TINY, enable_compilation_cache

from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(REPO, "experiments", "configs", "synthetic_dnl_tiny.py")
# Gradient accumulation on, so that it too is checked across processes.
OVERRIDES = {**TINY, "grad_accum_steps": 2, "optimizer.warmup_steps": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(process_id: int, port: int, workdir, overrides=OVERRIDES) -> subprocess.Popen:
    """Process `process_id` of 2 through the CLI's multi-host flags, with `overrides` as
    `--config.KEY=VALUE` flags (model.kwargs.* included)."""
    flags = [f"--config.{key}={value}" for key, value in overrides.items()]
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.train",
        "--config",
        DEMO_CONFIG,
        "--workdir",
        str(workdir),
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={process_id}",
        "--cpu_collectives=gloo",
        *flags,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", **CACHE_ENV)
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_processes_equal_one_process(tmp_path):
    workdir = tmp_path / "two"
    port = _free_port()
    procs = [_launch(i, port, workdir) for i in range(2)]
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=False):
        assert p.returncode == 0, err[-3000:]
    # Only process 0 reports.
    assert "completed at step 4" in outputs[0][0] and "completed" not in outputs[1][0]
    two_miou = float(re.search(r"val mIoU ([0-9.]+)", outputs[0][0]).group(1))

    spec = importlib.util.spec_from_file_location("demo_config", DEMO_CONFIG)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = demo.get_config()  # what the CLI ran: the demo config with the overrides
    config.update_from_flattened_dict(OVERRIDES)
    single = train_and_evaluate(config, str(tmp_path / "one"))
    assert jax.device_count() == 4 and jax.process_count() == 1
    two = load_variables(str(workdir / "checkpoints" / "4"))
    chex.assert_trees_all_close(two["params"], single["state"].params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        two["batch_stats"], single["state"].batch_stats, rtol=1e-5, atol=1e-6
    )
    assert two_miou == pytest.approx(single["val"]["miou"], abs=1e-4)  # printed with 4 digits
    # One complete checkpoint per saved step in the shared workdir, with both hosts' positions.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    data_files = set(os.listdir(workdir / "checkpoints" / "4" / "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= data_files
