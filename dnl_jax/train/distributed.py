"""Several processes: `jax.distributed.initialize` with the run's timeouts, and a lost host.

`config.distributed` sets the coordination service's timeouts (seconds):
    heartbeat_timeout_seconds      a process silent this long is dead (JAX then aborts the rest)
    initialization_timeout_seconds how long `initialize` waits for every process to connect
    shutdown_timeout_seconds       how long the exit barrier waits for the other processes

A lost host. When a process dies, the others fail in their next collective (gloo: at once,
"connection closed by peer") or block in it (NCCL, TPU) until the coordination service declares
the process dead and aborts every survivor with a C++ fatal log. Neither says what to do. So
every process runs a `PeerWatch`: a daemon thread that stamps a counter into the coordination
service's key-value store every `BEAT_SECONDS` and reads the others'. A peer whose counter has
not moved for `LOSS_FRACTION` of the heartbeat timeout, or a coordination service that no longer
answers (process 0 died), ends the process at once with one line: which process was lost, the
newest checkpoint step on disk, and the command that resumes. `os._exit` skips the exit
barrier, which would otherwise wait for the dead process until `shutdown_timeout_seconds`. A
process that finished marks itself done, so that the others never take a completed peer for a
lost one.

JAX's abort can come at half the timeout: the service declares a process dead once its last
heartbeat is a timeout old, and it measures as if clients beat every half timeout (a survivor
aborted 6.1-10.9 s after a SIGKILL with a 10 s timeout: experiments/results/heartbeat_probe.md).
The watch must end the process before that: `LOSS_FRACTION` x timeout + 2 beats (the stamp is
seen up to a beat late and checked once a beat) + `SCHEDULING_MARGIN` <= timeout / 2, which sets
the shortest timeout `check_config` takes.

Process 0 is different: it hosts JAX's coordination service, and when it dies JAX's client ends
every survivor at once with its own fatal log ("the JAX distributed service detected fatal
errors"), before any Python code can run. That exit is immediate (no hang) but has no line of
ours; the command to resume is the same: restart every process.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable

import ml_collections

from dnl_jax.train.preemption import distributed_client

BEAT_SECONDS = 0.5
LOSS_FRACTION = 0.25  # of heartbeat_timeout_seconds; JAX's own abort can come at 0.5
SCHEDULING_MARGIN = 1.0  # seconds left for the OS to run the watch on a loaded machine
# The shortest heartbeat timeout: a lost peer is told from a slow one only after 3 missed beats,
# and the watch's bound (module docstring) stays within half the timeout.
MIN_HEARTBEAT_SECONDS = math.ceil(
    max(
        3 * BEAT_SECONDS / LOSS_FRACTION,
        (2 * BEAT_SECONDS + SCHEDULING_MARGIN) / (0.5 - LOSS_FRACTION),
    )
)
KEY_PREFIX = "dnl_jax/alive/"
DONE = "done"
LOST_EXIT_CODE = 75  # EX_TEMPFAIL: restart all hosts

DEFAULTS = {
    "heartbeat_timeout_seconds": 100,
    "initialization_timeout_seconds": 300,
    "shutdown_timeout_seconds": 300,
}


def default_config() -> ml_collections.ConfigDict:
    """`config.distributed`: JAX's defaults, which suit a pod (a slow host is not a dead one)."""
    return ml_collections.ConfigDict(dict(DEFAULTS))


def check_config(section) -> None:
    """ValueError for a timeout that is not a positive integer number of seconds."""
    for key in DEFAULTS:
        value = section[key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"config.distributed.{key}={value!r} must be an integer >= 1 (seconds)."
            )
    if section.heartbeat_timeout_seconds < MIN_HEARTBEAT_SECONDS:
        raise ValueError(
            "config.distributed.heartbeat_timeout_seconds="
            f"{section.heartbeat_timeout_seconds} is too short to tell a slow host "
            f"from a lost one before JAX aborts; use >= {MIN_HEARTBEAT_SECONDS}."
        )


def initialize(section, **where) -> None:
    """`jax.distributed.initialize(**where)` with the timeouts of `section`
    (`config.distributed`); `where`: coordinator_address, num_processes, process_id, or nothing
    (the cluster's environment: TPU pods, SLURM, ...)."""
    import jax

    check_config(section)
    jax.distributed.initialize(
        **where,
        heartbeat_timeout_seconds=section.heartbeat_timeout_seconds,
        initialization_timeout=section.initialization_timeout_seconds,
        shutdown_timeout_seconds=section.shutdown_timeout_seconds,
    )


def newest_checkpoint(workdir: str) -> int | None:
    """The largest complete step directory in `workdir/checkpoints` (None: none)."""
    directory = os.path.join(workdir, "checkpoints")
    steps = (
        [int(name) for name in os.listdir(directory) if name.isdigit()]
        if os.path.isdir(directory)
        else []
    )
    return max(steps) if steps else None


def resume_command(argv: list | None = None) -> str:
    """This process's command line (`python -m dnl_jax.cli.train ...` for the CLI)."""
    argv = list(sys.argv if argv is None else argv)
    program = (
        "python -m dnl_jax.cli.train"
        if argv[0].endswith(
            (os.path.join("dnl_jax", "cli", "train.py"), os.path.join("dnl_jax", "main.py"))
        )
        else f"python {shlex.quote(argv[0])}"
    )
    return " ".join([program, *(shlex.quote(a) for a in argv[1:])])


def lost_message(lost: list[int], workdir: str, *, coordinator: bool = False) -> str:
    """The one line a survivor prints (see the module docstring)."""
    step = newest_checkpoint(workdir)
    who = (
        "process 0 (the coordinator) is unreachable"
        if coordinator
        else "lost process " + ", ".join(str(i) for i in lost)
    )
    since = f"resumes from step {step}" if step is not None else "starts again from step 0"
    return (
        f"main: {who}; stopping. Restart every process with its same command (this one: "
        f"{resume_command()}); the run {since} in {os.path.join(workdir, 'checkpoints')}."
    )


class PeerWatch:
    """The daemon thread of the module docstring; `finish()` marks this process done."""

    def __init__(
        self, workdir: str, heartbeat_timeout: float, *, exit_fn: Callable[[int], None] = os._exit
    ):
        import jax

        self.client = distributed_client()
        self.me, self.count = jax.process_index(), jax.process_count()
        self.workdir, self.limit = workdir, LOSS_FRACTION * heartbeat_timeout
        self.exit_fn = exit_fn
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._beats = 0
        self._seen: dict[int, tuple[str, float]] = {}
        self._thread = threading.Thread(target=self._run, name="dnl_jax-peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        if self.client is not None and self.count > 1:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                self._beats += 1
                self.client.key_value_set(
                    f"{KEY_PREFIX}{self.me}", str(self._beats), allow_overwrite=True
                )
                stamps = dict(self.client.key_value_dir_get(KEY_PREFIX))
            except Exception:  # noqa: BLE001 - the service is gone: process 0 died
                if self._stop.is_set():
                    return
                self._end([0], coordinator=self.me != 0)
                return
            lost = self._stale(stamps, time.monotonic())
            if lost and not self._stop.is_set():
                self._end(lost)
                return

    def _stale(self, stamps: dict, now: float) -> list[int]:
        """Peers whose stamp has not changed for `limit` seconds (done ones never)."""
        lost = []
        for peer in range(self.count):
            if peer == self.me:
                continue
            value = stamps.get(f"{KEY_PREFIX}{peer}", "")
            last_value, since = self._seen.get(peer, (None, now))
            if value != last_value:
                self._seen[peer] = (value, now)
            elif value not in ("", DONE) and now - since > self.limit:  # "": not started yet
                lost.append(peer)
        return lost

    def _end(self, lost: list[int], coordinator: bool = False) -> None:
        self.lost.set()
        print(
            lost_message(lost, self.workdir, coordinator=coordinator), file=sys.stderr, flush=True
        )
        sys.stdout.flush()
        self.exit_fn(LOST_EXIT_CODE)

    def wait_for_loss(self, seconds: float) -> bool:
        """After a failed collective: whether a peer turns out lost within `seconds` (the thread
        then ends the process, so a True is only seen with a test's `exit_fn`)."""
        return self.lost.wait(seconds) if self._thread.is_alive() or self.lost.is_set() else False

    def finish(self) -> None:
        """Marks this process done (the others stop watching it) and stops the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10 * BEAT_SECONDS)  # its last beat must not follow DONE
            with contextlib.suppress(Exception):  # shutting down anyway
                self.client.key_value_set(f"{KEY_PREFIX}{self.me}", DONE, allow_overwrite=True)


def run_watched(workdir: str, section, fn: Callable[[], object]):
    """`fn()` under a `PeerWatch` (several processes; none with one): a failure caused by a lost
    peer ends the process with the one line; any other error is raised as it is."""
    watch = PeerWatch(os.path.abspath(workdir), section.heartbeat_timeout_seconds).start()
    try:
        result = fn()
    except Exception:
        # A failed collective: if a peer died, the watch prints the line and ends the process.
        watch.wait_for_loss(watch.limit + 3 * BEAT_SECONDS)
        raise
    watch.finish()
    return result
