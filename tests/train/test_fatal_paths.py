"""Every fatal path of the training command ends in one line, with nothing after it: a full disk
(several runs in a row: orbax's teardown races vary), a non-finite step, SIGTERM, Ctrl-C (the
first saves and exits 130, a second exits at once). No traceback, no library error record, no
unfinished save left, and on resume no duplicate rows in metrics.jsonl. The lost-peer path is
tests/train/test_multihost_faults.py's."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

from train_testing import CACHE_ENV

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "experiments", "configs", "synthetic_dnl_tiny.py")
FULL_DISK_MAIN = os.path.join(REPO, "tests", "train", "full_disk_main.py")
SLOW_EVALUATION_MAIN = os.path.join(REPO, "tests", "train", "slow_evaluation_main.py")
# A library's absl/glog record at ERROR (orbax's "E1207 ... future.py:387] ...").
LIBRARY_ERROR = re.compile(r"^E\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]", re.MULTILINE)
TINY = (
    "--config.data.synthetic.image_size=32",
    "--config.data.num_classes=5",
    "--config.batch_size=4",
    "--config.evals.val.batch_size=4",
    "--config.data.synthetic.num_val=8",
    "--config.optimizer.warmup_steps=0",
    "--config.curves_figure=false",
    "--config.attention_figure=false",
    "--config.log_every_steps=1",
)


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, **CACHE_ENV}


def _command(workdir, *overrides, program=("-m", "dnl_jax.cli.train")):
    return [
        sys.executable,
        *program,
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        *TINY,
        *overrides,
    ]


def _run(command):
    result = subprocess.run(
        command, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600, check=False
    )
    return result.returncode, result.stdout + result.stderr


def _last_line(output):
    return output.strip().splitlines()[-1]


def assert_one_clean_message(output):
    assert "Traceback" not in output, output
    assert not LIBRARY_ERROR.search(output), output


def assert_no_duplicate_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        keys = [(r["step"], r["split"]) for r in map(json.loads, file)]
    assert len(keys) == len(set(keys)), keys


def test_full_disk_is_one_line_naming_the_last_good_step_every_time(tmp_path):
    """The disk fills while step 4 is written (full_disk_main.py): each run (the second and
    third resume from step 2) ends with the one line, no traceback or library error record,
    no partial save; `--verbosity=0` still shows orbax's own report."""
    command = _command(
        tmp_path,
        "--config.checkpoint.every_steps=2",
        "--config.total_steps=6",
        "--config.progress_bar=false",
        program=(FULL_DISK_MAIN, "4"),
    )
    for attempt in range(3):
        code, output = _run(command)
        assert code == 1, output
        assert_one_clean_message(output)
        last = _last_line(output)
        assert last.startswith("main: no space left on device while saving checkpoint step 4")
        assert "the last good checkpoint is step 2" in last, (attempt, output)
        assert not glob.glob(str(tmp_path / "checkpoints" / "*orbax-checkpoint-tmp*"))
        assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
        assert_no_duplicate_rows(tmp_path)  # steps 3 and 4 were logged again on resume
    code, output = _run([*command, "--verbosity=0"])
    assert code == 1 and "_SignalingThread.run() raised an exception" in output, output
    assert "the last good checkpoint is step 2" in _last_line(output)


def test_non_finite_step_is_one_line(tmp_path):
    code, output = _run(
        _command(
            tmp_path,
            "--config.total_steps=2",
            "--config.progress_bar=false",
            "--config.data.synthetic.noise=nan",
        )
    )
    assert code == 1, output
    assert_one_clean_message(output)
    # NaN images: the evaluation before training sees them first.
    last = _last_line(output)
    assert last.startswith("main: evaluation 'val' of the weights after step 0"), output
    assert "non-finite (NaN or inf) outputs" in last


def _start(workdir, *overrides, program=("-m", "dnl_jax.cli.train")):
    log = open(workdir.parent / f"{workdir.name}.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        _command(workdir, *overrides, program=program),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=REPO,
    )
    return process, log


def _wait_for(predicate, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _trained_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as file:
        return sum('"split": "train"' in line for line in file)


def _finish(process, log):
    code = process.wait(timeout=300)
    log.seek(0)
    output = log.read()
    log.close()
    return code, output


def test_sigterm_then_ctrl_c_each_save_one_checkpoint_and_say_how_to_resume(tmp_path):
    """SIGTERM, then Ctrl-C in the resumed run: each stops after the step it interrupts, saves
    it, says so in one line (Ctrl-C: exit status 130); metrics.jsonl holds each step once."""
    workdir = tmp_path / "run"
    long_run = ("--config.total_steps=500", "--config.progress_bar=false")
    for signum, expected_code in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
        before = _trained_steps(workdir)
        process, log = _start(workdir, *long_run)
        _wait_for(lambda: _trained_steps(workdir) >= before + 2, process)  # noqa: B023
        process.send_signal(signum)
        code, output = _finish(process, log)
        assert code == expected_code, output
        assert_one_clean_message(output)
        saved = max(int(s) for s in os.listdir(workdir / "checkpoints"))
        if signum == signal.SIGINT:
            assert _last_line(output) == (
                f"interrupted (Ctrl-C) during training: checkpoint at step {saved} in "
                f"{workdir / 'checkpoints'}; stopped cleanly. Rerun the same command to resume."
            ), output
        else:
            assert f"preempted (SIGTERM) during training: checkpoint at step {saved}" in output
        assert_no_duplicate_rows(workdir)
    # Resuming with another learning rate changes the trajectory: one line, nothing written.
    code, output = _run(_command(workdir, *long_run, "--config.optimizer.lr=0.2"))
    assert code == 1, output
    assert_one_clean_message(output)
    assert _last_line(output).startswith("main: the config differs"), output
    assert "optimizer.lr 0.1 → 0.2" in _last_line(output) and "--allow_config_change" in output


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path):
    """The first Ctrl-C arrives while the evaluation before training runs (held open for minutes
    by slow_evaluation_main.py, so both signals land in it); the second ends the run at once."""
    workdir, marker = tmp_path / "run", tmp_path / "evaluating"
    process, log = _start(
        workdir,
        "--config.total_steps=500",
        "--config.progress_bar=true",
        program=(SLOW_EVALUATION_MAIN, str(marker)),
    )
    _wait_for(marker.exists, process)
    process.send_signal(signal.SIGINT)
    time.sleep(1.0)  # the first one is handled (recorded) before the second arrives
    assert process.poll() is None, "the first Ctrl-C ended the run"
    process.send_signal(signal.SIGINT)
    code, output = _finish(process, log)
    assert code == 130, output
    assert "Traceback" not in output, output
    assert _last_line(output).startswith("second Ctrl-C: stopped at once"), output
    assert not os.path.isdir(workdir / "checkpoints") or not os.listdir(workdir / "checkpoints")
