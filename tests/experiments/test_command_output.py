"""Each command line prints only its own lines at the default verbosity: no absl/glog records from
orbax or jax ("I1205 ... checkpoint_manager.py] ...", "Unable to initialize backend 'tpu'"), and
the libraries' records come back with the verbosity flag."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import write_ade20k

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "synthetic_dnl_tiny.py")
# An absl/glog-formatted record: severity letter, MMDD, time, thread id, file:line].
LIBRARY_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]", re.MULTILINE)


def run(*args, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def assert_own_lines_only(output):
    assert not LIBRARY_RECORD.search(output), output
    assert "libtpu" not in output and "Traceback" not in output, output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    output = run(
        "dnl_jax.cli.train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        "--config.total_steps=2",
        "--config.checkpoint.every_steps=2",
        "--config.progress_bar=false",
        "--config.curves_figure=false",
        "--config.attention_figure=false",
        "--config.optimizer.warmup_steps=0",
    )
    return workdir, output


def test_main_prints_its_own_lines(trained):
    workdir, output = trained
    assert "completed at step 2" in output and f"workdir: {workdir}" in output
    assert_own_lines_only(output)


def test_evaluate_and_analyze_print_their_own_lines(trained, tmp_path):
    workdir, _ = trained
    checkpoint = os.path.join(workdir, "checkpoints", "2")
    output = run(
        "dnl_jax.cli.evaluate",
        "--config",
        CONFIG,
        "--checkpoint",
        checkpoint,
        "--output_dir",
        str(tmp_path / "eval"),
    )
    assert "metrics_val.json" in output
    assert_own_lines_only(output)
    analyze = (
        "dnl_jax.cli.analyze",
        "--config",
        CONFIG,
        "--checkpoint",
        checkpoint,
        "--num_images",
        "4",
        "--output_dir",
        str(tmp_path / "analysis"),
    )
    output = run(*analyze)
    assert "| block |" in output and "analysis.json" in output
    assert_own_lines_only(output)
    # The libraries' records are one flag away (orbax logs its restore at INFO).
    assert LIBRARY_RECORD.search(run(*analyze, "--verbosity=0"))


def test_convert_and_prepare_print_their_own_lines(tmp_path):
    import jax
    import torch

    from dnl_jax.interop import convert, segmentor

    # dnl_tiny as an mmseg state_dict (zeros: the values do not matter here).
    module = convert.build_module({}, "dnl_tiny", 3, 8)
    template = segmentor.segmentor_template(module)
    zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), template)
    torch.save(
        segmentor.flax_segmentor_to_torch_state_dict(zeros, as_torch=True),
        tmp_path / "dnl_tiny.pth",
    )
    output = run(
        "dnl_jax.cli.convert",
        str(tmp_path / "dnl_tiny.pth"),
        str(tmp_path / "out"),
        "--model",
        "dnl_tiny",
    )
    assert "wrote" in output
    assert_own_lines_only(output)

    write_ade20k(str(tmp_path / "raw"), np.random.default_rng(0))
    output = run(
        "dnl_jax.cli.prepare",
        "ade20k",
        "--manual_dir",
        str(tmp_path / "raw"),
        "--data_dir",
        str(tmp_path / "prepared"),
    )
    assert_own_lines_only(output)
