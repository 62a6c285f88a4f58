"""The trainer as the soak test (experiments/soak.py) runs and observes it: the command and its
environment, the checkpoint steps on disk and saves in progress, the output read live (the
progress bar's step), the facts of a resume, and the final comparison with the reference."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import threading
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from dnl_jax.train.checkpoint import load_variables  # noqa: E402

CONFIG = "experiments/configs/synthetic_dnl_tiny.py"
TMP_MARK = ".orbax-checkpoint-tmp"
PROGRESS = re.compile(r"(\d+)/\d+ \[")
REMOVED = re.compile(r"removed \d+ unfinished checkpoint")


def command(workdir: str, args) -> list[str]:
    """The training command: the demo recipe, shrunk to a short run with frequent checkpoints."""
    overrides = dict(
        total_steps=args.steps,
        **{"checkpoint.every_steps": args.every},
        **{"evals.val.every_steps": 0},
        log_every_steps=args.every,
        batch_size=8,
        curves_figure=False,
        attention_figure=False,
        **{"data.synthetic.image_size": 32, "data.synthetic.num_val": 32},
    )
    return [
        sys.executable,
        "-m",
        "dnl_jax.cli.train",
        "--config",
        CONFIG,
        "--workdir",
        workdir,
        *[f"--config.{key}={value}" for key, value in overrides.items()],
    ]


def environment(cache_dir: str) -> dict:
    """Shared persistent compilation cache: restarts reuse the reference run's programs."""
    return {
        **os.environ,
        "PYTHONPATH": REPO,
        "JAX_COMPILATION_CACHE_DIR": cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def steps_on_disk(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def save_started_since(workdir: str, since: float) -> bool:
    """Whether a save began after `since`: an orbax temporary step directory created since then
    (a stale one, left by an earlier kill, is recreated when its step is saved again)."""
    paths = glob.glob(os.path.join(workdir, "checkpoints", "*" + TMP_MARK + "*"))
    return any(_created(path) > since for path in paths)


def _created(path: str) -> float:
    try:
        return os.stat(path).st_ctime
    except FileNotFoundError:  # renamed into place meanwhile
        return 0.0


def start_training(workdir: str, args, env: dict) -> subprocess.Popen:
    """The training command, its stdout and stderr in one pipe."""
    return subprocess.Popen(
        command(workdir, args), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


class Output:
    """Collects a process's output in a thread and parses the progress bar's step ('74/200')."""

    def __init__(self, process: subprocess.Popen):
        self.text, self.step = "", 0
        self._thread = threading.Thread(
            target=self._read, args=(process.stdout.fileno(),), daemon=True
        )
        self._thread.start()

    def _read(self, fd: int) -> None:
        while chunk := os.read(fd, 4096):
            self.text += chunk.decode(errors="replace")
            steps = PROGRESS.findall(self.text[-400:])
            if steps:
                self.step = int(steps[-1])

    def join(self) -> str:
        self._thread.join()
        return self.text


def final_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(("completed", "preempted"))]
    return lines[-1] if lines else ""


def wait_until(process: subprocess.Popen, condition) -> None:
    while process.poll() is None and not condition():
        time.sleep(0.002)


def output_completed(output: str) -> bool:
    return final_line(output).startswith("completed")


def resume_facts(output: str) -> dict:
    resumed = re.findall(r"resumed from \S+ at step (\d+)", output)
    aside = re.findall(r"checkpoint step (\d+) in \S+ does not restore", output)
    errors = [line for line in output.splitlines() if line.startswith(("Traceback", "error"))]
    return dict(
        resumed_from=int(resumed[-1]) if resumed else None,
        set_aside=[int(step) for step in aside],
        errors=errors[:3],
    )


def compare(reference_dir: str, soak_dir: str, step: int) -> dict:
    """Final params and batch statistics: bitwise equality and the largest |difference|."""
    paths = [os.path.join(d, "checkpoints", str(step)) for d in (reference_dir, soak_dir)]
    reference, soaked = (load_variables(path) for path in paths)
    differences = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))),
        reference,
        soaked,
    )
    leaves = jax.tree.leaves(differences)
    equal = all(jax.tree.leaves(jax.tree.map(np.array_equal, reference, soaked)))
    return dict(bitwise_equal=bool(equal), max_abs_difference=max(leaves), leaves=len(leaves))
