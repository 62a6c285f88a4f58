"""One loss however the batch is split, end to end: with ignore pixels (a quarter of
every label map) and OHEM on, 4 training steps under jit (4 fake devices), pmap, gradient
accumulation (2 micro-batches) and two real processes (gloo, 2 fake devices each) end with the
same parameters. Batch norm is frozen and dropout off: those legitimately depend on the split
(micro-batch statistics, per-device masks); the loss must not."""

import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
from train_testing import CACHE_ENV, TINY, enable_compilation_cache

from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = {**TINY, "data.synthetic.ignore_fraction": 0.25}
MODEL_KWARGS = {
    "ohem": {"thresh": 0.7, "min_kept": 300},
    "frozen_bn": True,
    "dropout_rate": 0.0,
    "class_weights": (0.8, 1.0, 1.2, 0.9, 1.1),
}
CONFIG_FILE = f"""
from dnl_jax.train.config import base_config


def get_config():
    config = base_config()
    config.update_from_flattened_dict({SETTINGS!r})
    config.model.kwargs.update({MODEL_KWARGS!r})
    return config
"""


def _config_module(tmp_path):
    path = tmp_path / "split_config.py"
    path.write_text(CONFIG_FILE)
    namespace = {}
    exec(compile(CONFIG_FILE, str(path), "exec"), namespace)
    return str(path), namespace["get_config"]


def _launch_two_processes(config_path, workdir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", **CACHE_ENV)
    env.pop("XLA_FLAGS", None)
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dnl_jax.cli.train",
                "--config",
                config_path,
                "--workdir",
                str(workdir),
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--cpu_collectives=gloo",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def test_jit_pmap_accumulation_and_two_processes_train_alike(tmp_path):
    config_path, get_config = _config_module(tmp_path)
    procs = _launch_two_processes(config_path, tmp_path / "two")
    finals = {}
    for name, overrides in (
        ("jit", {}),
        ("pmap", {"parallelism": "pmap"}),
        ("accumulation", {"grad_accum_steps": 2}),
    ):
        config = get_config()
        config.update_from_flattened_dict(overrides)
        finals[name] = train_and_evaluate(config, str(tmp_path / name))["state"]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    two = load_variables(str(tmp_path / "two" / "checkpoints" / "4"))
    reference = finals["jit"].params
    for name in ("pmap", "accumulation"):
        chex.assert_trees_all_close(finals[name].params, reference, rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(two["params"], reference, rtol=2e-5, atol=2e-6)
    # The steps moved the parameters (runs that all did nothing would agree too): the SGD
    # momentum traces are not zero.
    traces = [
        np.abs(np.asarray(x)).max()
        for x in jax.tree.leaves(finals["jit"].opt_state)
        if np.asarray(x).dtype == np.float32
    ]
    assert max(traces) > 0
