"""Spatial parallelism (config.mesh.space): the checks on 8 fake devices, the config's checks,
and a 'space' axis spanning two real JAX processes (gloo, 2 fake devices each) that trains to
the same parameters as one data-parallel process."""

import os
import re
import subprocess
import sys

import chex
import jax
import pytest
from test_train_multiprocess import REPO, _free_port, _launch
from train_testing import CACHE_ENV, TINY, enable_compilation_cache, tiny_config

from dnl_jax import tasks
from dnl_jax.recipes.ablation import synthetic_config
from dnl_jax.train import parallel
from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.config import validate_config
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()


def test_sharded_equals_unsharded_on_eight_devices():
    """tests/train/spatial_eight_devices.py in its own process with 8 fake devices: every block
    type, the segmentor and video train steps, sharded whole-image and sliding-window evaluation."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8", **CACHE_ENV)
    env.pop("XLA_FLAGS", None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--noconftest",
        "-q",
        "-p",
        "no:xdist",
        "-p",
        "no:cacheprovider",
        os.path.join(REPO, "tests", "train", "spatial_eight_devices.py"),
    ]
    done = subprocess.run(
        command,
        env=env,
        cwd=os.path.join(REPO, "tests"),
        text=True,
        capture_output=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"\b[1-9]\d* passed", done.stdout) and "failed" not in done.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mesh.space": 3}, "must be >= 1 and divide the 4 devices"),
        ({"mesh.data": 4, "mesh.space": 2}, "must equal the 4 devices"),
        ({"mesh.space": 2, "parallelism": "pmap"}, "spatial sharding needs the jit driver"),
        ({"mesh.space": 2, "batch_size": 3}, "divisible by the 2 data shards"),
    ],
)
def test_bad_meshes_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        config = tiny_config(**overrides)
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=4, num_processes=1)


def test_mesh_defaults_and_pmap_refusal():
    config = tiny_config(**{"mesh.space": 2, "batch_size": 2, "evals.val.batch_size": 4})
    validate_config(
        config,
        tasks.for_dataset(config.data.name),
        num_devices=4,
        num_processes=1,
    )
    assert parallel.make_mesh(2).shape == {"data": 2, "space": 2}
    with pytest.raises(ValueError, match="parallelism='jit'"):
        parallel.make_driver("pmap", None, None, space=2)


# Data 1 × space 4 across the two processes: both read the same rows (one data shard).
MESH = {"mesh.data": 1, "mesh.space": 4}
OVERRIDES = {**TINY, "optimizer.warmup_steps": 0, "model.kwargs.dropout_rate": 0.0}


def test_space_axis_across_two_processes_equals_one_data_parallel_process(tmp_path):
    port = _free_port()
    procs = [_launch(i, port, tmp_path / "two", {**OVERRIDES, **MESH}) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=False):
        assert p.returncode == 0, err[-3000:]
    two_miou = float(re.search(r"val mIoU ([0-9.]+)", outputs[0][0]).group(1))
    config = synthetic_config("dnl_tiny")  # the demo config, as the CLI ran it
    config.update_from_flattened_dict(
        {key: value for key, value in OVERRIDES.items() if not key.startswith("model.kwargs.")}
    )
    config.model.kwargs.dropout_rate = 0.0
    single = train_and_evaluate(config, str(tmp_path / "one"))  # mesh data=4, space=1
    assert jax.device_count() == 4 and jax.process_count() == 1
    two = load_variables(str(tmp_path / "two" / "checkpoints" / "4"))
    chex.assert_trees_all_close(two["params"], single["state"].params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        two["batch_stats"], single["state"].batch_stats, rtol=1e-5, atol=1e-6
    )
    assert two_miou == pytest.approx(single["val"]["miou"], abs=1e-4)  # printed with 4 digits
