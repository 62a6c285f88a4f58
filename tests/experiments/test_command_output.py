"""Each command line prints only its own lines at the default verbosity: no absl/glog records from
orbax or jax ("I1205 ... checkpoint_manager.py] ...", "Unable to initialize backend 'tpu'"), and
the libraries' records come back with the verbosity flag. Every bad input is one line and no
traceback: a missing, unreadable or broken --config file (main, evaluate, analyze), a missing
checkpoint path, another model's checkpoint and a damaged one (evaluate, analyze), a missing,
damaged or mismatching PyTorch checkpoint (convert)."""

import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import write_ade20k

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "synthetic_dnl_tiny.py")
# An absl/glog-formatted record: severity letter, MMDD, time, thread id, file:line].
LIBRARY_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]", re.MULTILINE)


def run(*args, timeout=600, expect=0):
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
    assert result.returncode == expect, result.stdout + result.stderr
    return result.stdout + result.stderr


def one_line(output, *, starts):
    """The output is exactly one line, starting with `starts`."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), output
    assert "Traceback" not in output, output
    return lines[0]


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
        "--config.checkpoint.every_steps=1",
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


# ------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def broken_configs(tmp_path_factory):
    """{case: (path, what the line must say)}: missing, unreadable (not UTF-8), a syntax error."""
    directory = tmp_path_factory.mktemp("configs")
    (directory / "binary.py").write_bytes(b"\xff\xfe\x00 not text")
    (directory / "syntax.py").write_text("def get_config():\n    return {'a': 1\n")
    return {
        "missing": (str(directory / "missing.py"), "no such file"),
        "unreadable": (str(directory / "binary.py"), "cannot be read: UnicodeDecodeError"),
        "syntax": (str(directory / "syntax.py"), "line 2: SyntaxError"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "syntax"])
@pytest.mark.parametrize("command", ["main", "evaluate", "analyze"])
def test_a_bad_config_file_is_one_line(command, case, broken_configs, tmp_path):
    path, says = broken_configs[case]
    extra = ["--workdir", str(tmp_path)] if command == "main" else ["--checkpoint", str(tmp_path)]
    output = run(f"dnl_jax.{command}", "--config", path, *extra, expect=1)
    line = one_line(output, starts=f"{command}: --config={path}")
    assert says in line, line


def _damaged_copy(workdir, tmp_path):
    """A copy of the run's checkpoints whose newest step has 4 KiB of random bytes in the middle
    of its largest array file (changed, not truncated)."""
    copy = tmp_path / "checkpoints"
    shutil.copytree(os.path.join(workdir, "checkpoints"), copy)
    files = glob.glob(str(copy / "2" / "state" / "**" / "d" / "*"), recursive=True)
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2 - 2048)
        file.write(np.random.default_rng(0).bytes(4096))
    return copy


@pytest.mark.parametrize("command", ["evaluate", "analyze"])
def test_bad_checkpoints_are_one_line(command, trained, tmp_path):
    workdir, _ = trained
    base = (f"dnl_jax.{command}", "--config", CONFIG)
    missing = str(tmp_path / "nowhere" / "7")
    line = one_line(run(*base, "--checkpoint", missing, expect=1), starts=f"{command}: ")
    assert f"--checkpoint={missing} does not exist" in line
    checkpoint = os.path.join(workdir, "checkpoints", "2")
    other_model = run(*base, "--checkpoint", checkpoint, "--config.data.num_classes=5", expect=1)
    line = one_line(other_model, starts=f"{command}: --checkpoint={checkpoint} does not fit")
    damaged = _damaged_copy(workdir, tmp_path)
    line = one_line(
        run(*base, "--checkpoint", str(damaged / "2"), expect=1),
        starts=f"{command}: {damaged / '2'} is damaged",
    )
    assert f"the newest good checkpoint beside it is step 1 ({damaged / '1'})" in line, line


def test_convert_bad_inputs_are_one_line(tmp_path):
    import torch

    missing = run(
        "dnl_jax.interop.convert", str(tmp_path / "none.pth"), str(tmp_path / "o"), expect=2
    )
    one_line(missing, starts="error: checkpoint file not found")
    damaged = tmp_path / "damaged.pth"
    torch.save({"decode_head.conv_seg.weight": torch.zeros(3, 4, 1, 1)}, damaged)
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short, as by a failed copy
    output = run("dnl_jax.interop.convert", str(damaged), str(tmp_path / "o"), expect=2)
    one_line(output, starts=f"error: {str(damaged)!r} is not a readable torch.save file")
    other = tmp_path / "other.pth"
    torch.save({"decode_head.conv_seg.weight": torch.zeros(3, 4, 1, 1)}, other)
    output = run(
        "dnl_jax.interop.convert", str(other), str(tmp_path / "o"), "--model", "dnl_tiny", expect=2
    )
    assert "Traceback" not in output and output.startswith("error: "), output
