"""Two real JAX processes (tests/multihost_launcher.py: gloo CPU collectives on 127.0.0.1, 2 fake
devices each) meet a preemption and a lost host:

- SIGTERM to one process at three moments of one run (start-up, mid-training, mid-evaluation),
  each followed by a restart: every stop is agreed by both processes (one checkpoint at one
  step, a clean exit with the line that says so), and the resumed run ends with the parameters
  and val mIoU of an uninterrupted run (this process, 4 fake devices, same global batch).
- SIGKILL of each process in turn (both paths on every run), at a random moment of training: the
  survivor exits within the documented bound (docs/reliability.md: LOSS_FRACTION x the heartbeat
  timeout + two beats of the watch, + 2 s for the OS to schedule the survivor on a loaded
  machine), with the one line (lost process, last checkpoint step, the command to resume) when
  process 1 died, and by JAX's own immediate abort when process 0 (the coordination service's
  host) died; restarting both finishes with the uninterrupted run's parameters and mIoU.

Every subprocess wait has a timeout and every process is killed in `finally`.
"""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import pytest
from multihost_launcher import _config
from train_testing import CACHE_ENV, enable_compilation_cache

from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.distributed import BEAT_SECONDS, LOSS_FRACTION, LOST_EXIT_CODE
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(REPO, "tests", "multihost_launcher.py")
HEARTBEAT = 12  # JAX may abort a survivor from 6 s after a death; the watch: 4 s + scheduling
OVERRIDES = {
    "total_steps": 8,
    "checkpoint.every_steps": 2,
    "evals.val.every_steps": 4,
    "data.synthetic.num_val": 32,
    "evals.val.batch_size": 4,
    "optimizer.warmup_steps": 0,
    "distributed.heartbeat_timeout_seconds": HEARTBEAT,
    "distributed.shutdown_timeout_seconds": 20,
    "distributed.initialization_timeout_seconds": 120,
}
RUN_TIMEOUT = 300
# docs/reliability.md: a survivor sees a peer's last stamp within one beat of it, and checks
# once a beat, so it exits within LOSS_FRACTION x heartbeat + 2 beats; 2 s more for scheduling.
SCHEDULING_SLACK = 2.0
LOST_HOST_BOUND = LOSS_FRACTION * HEARTBEAT + 2 * BEAT_SECONDS + SCHEDULING_SLACK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, port, process_id, sigterm=None):
    args = [sys.executable, LAUNCHER, str(port), str(process_id), str(workdir)]
    if sigterm:
        args += ["--sigterm", sigterm]
    args += [f"{key}={value}" for key, value in OVERRIDES.items()]
    # No persistent compilation cache: JAX writes it from process 0 only, so process 1 would
    # always compile while process 0 loads, and a skew over gloo's fixed 30 s context timeout
    # fails the first collective. Both compiling keeps them in step.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
    for key in ("XLA_FLAGS", *CACHE_ENV):
        env.pop(key, None)
    return subprocess.Popen(
        args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _kill_all(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def _run_pair(workdir, sigterm=None, target=0):
    """Both processes to the end; SIGTERM per `sigterm` to process `target`; (rc, out, err)s."""
    port = _free_port()
    processes = [_start(workdir, port, i, sigterm if i == target else None) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=RUN_TIMEOUT) for p in processes]
        return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=False)]
    finally:
        _kill_all(processes)


def _tails(outputs) -> str:
    """Both processes' last output, for a failure message."""
    return "\n".join(
        f"--- process {i} (rc {rc}):\n{out[-1500:]}\n{err[-2500:]}"
        for i, (rc, out, err) in enumerate(outputs)
    )


def _result(outputs):
    line = re.search(r"RESULT (\w+) (\d+) (\S+)", outputs[0][1])
    assert line, _tails(outputs)
    return line.group(1), int(line.group(2)), line.group(3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run in this process (4 fake devices, the same global batch)."""
    config = _config(OVERRIDES)
    result = train_and_evaluate(config, str(tmp_path_factory.mktemp("reference")))
    assert jax.device_count() == 4 and result["status"] == "completed"
    return result


def _assert_same_as(reference, workdir, miou):
    final = load_variables(str(workdir / "checkpoints" / str(OVERRIDES["total_steps"])))
    chex.assert_trees_all_close(final["params"], reference["state"].params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        final["batch_stats"], reference["state"].batch_stats, rtol=1e-5, atol=1e-6
    )
    assert float(miou) == pytest.approx(reference["val"]["miou"], abs=1e-5)


def _steps(workdir):
    directory = workdir / "checkpoints"
    return (
        sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if directory.is_dir() else []
    )


def test_sigterm_on_one_host_at_three_moments_resumes_exactly(tmp_path, reference):
    workdir = tmp_path / "run"
    # 1. Start-up: nothing trained yet, so nothing to save; both stop.
    outputs = _run_pair(workdir, "startup", target=1)
    assert [rc for rc, _, _ in outputs] == [0, 0], _tails(outputs)
    status, step, _ = _result(outputs)
    assert status == "preempted" and step <= 1
    assert "preempted (SIGTERM)" in outputs[0][2] + outputs[0][1]
    # 2. Mid-training, SIGTERM to process 0 after step 2: one checkpoint at an agreed step.
    outputs = _run_pair(workdir, "step:2", target=0)
    assert [rc for rc, _, _ in outputs] == [0, 0], _tails(outputs)
    status, stopped, _ = _result(outputs)
    assert status == "preempted" and 2 < stopped < OVERRIDES["total_steps"]
    assert _steps(workdir)[-1] == stopped
    assert "during training: checkpoint at step" in outputs[0][2] + outputs[0][1]
    # 3. Mid-evaluation (process 1): stops between batches, saves the evaluated step.
    outputs = _run_pair(workdir, "eval", target=1)
    assert [rc for rc, _, _ in outputs] == [0, 0], _tails(outputs)
    status, stopped, _ = _result(outputs)
    assert status == "preempted" and "during evaluation" in outputs[0][2] + outputs[0][1]
    assert _steps(workdir)[-1] == stopped
    # 4. The restart redoes that evaluation and finishes like the uninterrupted run.
    outputs = _run_pair(workdir)
    assert [rc for rc, _, _ in outputs] == [0, 0], _tails(outputs)
    status, step, miou = _result(outputs)
    assert (status, step) == ("completed", OVERRIDES["total_steps"])
    _assert_same_as(reference, workdir, miou)


@pytest.mark.parametrize("victim", [1, 0], ids=["lost_peer", "lost_coordinator"])
def test_a_lost_host_ends_its_peer_with_one_line_and_a_restart_finishes(
    tmp_path, reference, victim
):
    seed = os.getpid()
    workdir, rng = tmp_path / "run", random.Random(seed)
    survivor = 1 - victim
    port = _free_port()
    processes = [_start(workdir, port, i) for i in range(2)]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not _steps(workdir) and time.monotonic() < deadline:  # training under way
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.0))
        processes[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = processes[survivor].communicate(timeout=HEARTBEAT + 60)
        took = time.monotonic() - killed
    finally:
        _kill_all(processes)
    assert took <= LOST_HOST_BOUND, f"{took:.1f} s > {LOST_HOST_BOUND} s (delay seed {seed})"
    if victim == 1:
        assert processes[survivor].returncode == LOST_EXIT_CODE, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("main: lost process 1; stopping.") and "resumes from step" in last, (
            err[-3000:]
        )
        assert "multihost_launcher.py" in last  # the command to run again
    else:
        # Process 0 hosts JAX's coordination service: its death makes JAX's client end the
        # survivor at once with its own fatal log (before any Python code can run); no hang.
        assert processes[survivor].returncode != 0
        assert "JAX distributed service detected fatal errors" in err, err[-3000:]
    print(
        f"survivor {survivor} exited (rc {processes[survivor].returncode}) {took:.1f} s after "
        f"SIGKILL of process {victim}"
    )
    outputs = _run_pair(workdir)
    assert [rc for rc, _, _ in outputs] == [0, 0], _tails(outputs)
    status, step, miou = _result(outputs)
    assert (status, step) == ("completed", OVERRIDES["total_steps"])
    _assert_same_as(reference, workdir, miou)
