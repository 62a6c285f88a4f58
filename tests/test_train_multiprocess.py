"""Two real JAX processes (gloo CPU collectives on 127.0.0.1, 2 fake devices each) train to the
same parameters as this single process (4 fake devices) with the same global batch."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np

from dnl_jax.train.trainer import train_and_evaluate
from train_testing import CACHE_ENV, TINY, enable_compilation_cache, tiny_config

enable_compilation_cache()
# Gradient accumulation on, so that it too is checked across processes.
OVERRIDES = {**TINY, "grad_accum_steps": 2}

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, process_id, workdir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from dnl_jax.train.config import base_config
    from dnl_jax.train.trainer import train_and_evaluate
    config = base_config()
    config.update_from_flattened_dict(json.loads(overrides))
    result = train_and_evaluate(config, workdir)
    assert jax.device_count() == 4 and jax.process_count() == 2
    leaves = jax.tree_util.tree_leaves_with_path(result["state"].params)
    np.savez(f"{workdir}/params_{process_id}.npz",
             **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    print("MIOU", result["val"]["miou"])
    jax.distributed.shutdown()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
    workdir = tmp_path / "two"
    workdir.mkdir()
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", **CACHE_ENV)
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(workdir),
                               json.dumps(OVERRIDES)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]

    single = train_and_evaluate(tiny_config(**OVERRIDES), str(tmp_path / "one"))
    assert jax.device_count() == 4 and jax.process_count() == 1
    expected = {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(single["state"].params)}
    for process_id in range(2):  # both hosts hold the same (replicated) parameters
        got = dict(np.load(workdir / f"params_{process_id}.npz"))
        chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
    mious = [float(out.split("MIOU")[1].split()[0]) for out, _ in outputs]
    np.testing.assert_allclose(mious, single["val"]["miou"], rtol=1e-6)
    # The shared workdir holds one complete checkpoint per saved step, and both hosts' data
    # positions.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    data_files = set(os.listdir(workdir / "checkpoints" / "4" / "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= data_files
