"""Preemption: a SIGTERM on any host → one checkpoint at a step every host agrees on → clean exit.

Several processes (`jax.distributed.initialize` ran): JAX's own preemption service. Its SIGTERM
notifier is installed by `jax.distributed.initialize` (so before restore and compile); a notice
on any host reaches every host through the coordination service, which then agrees on a sync
point: one more than the largest counter any host has passed to
`multihost_utils.reached_preemption_sync_point`. Nothing here replaces its signal handler, and
no collective runs per step: `reached_preemption_sync_point` only reads a local flag.

One process (no distributed client): JAX's service does not exist, so SIGTERM is caught here by a
Python handler that only records it. It is never installed when a distributed client exists.

Ctrl-C (SIGINT) stops the same way: the step finishes, a checkpoint is saved, one line says where
and how to resume, and the command exits with 130. With one process our handler records it like
SIGTERM; with several, it hands the stop to JAX's service by sending this process a SIGTERM, so
every host stops at the same agreed check. A second Ctrl-C ends the process at once, with one
line and no traceback (nothing saved since the last checkpoint): "at once" even while the main
thread is inside XLA (a compile, a step), where Python runs no signal handler, because a small
thread counts the Ctrl-Cs that the C-level handler writes to `signal.set_wakeup_fd`.

The counter passed to JAX is this watcher's own count of checks, not the training step: every
host makes the same checks in the same order (after restore, between evaluation batches, after
each training step), so equal counts mean equal places in the program, from the first check on.
A notice that arrives before the first check (during start-up: restore, data, compile) sets
the sync point to 1, the first check. Orbax asks JAX too, with step numbers, which would move
the counter: the trainer's CheckpointManager answers orbax `reached_preemption` itself
(checkpoint.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


# In the workdir while an evaluation a preemption interrupted is still to be redone.
INTERRUPTED_EVALUATION = "interrupted_evaluation"
# The exit status of a command stopped by Ctrl-C (the shells' 128 + SIGINT).
CTRL_C_EXIT_CODE = 128 + signal.SIGINT


class Preempted(Exception):
    """Raised between evaluation batches when the hosts reached the preemption sync point."""


def distributed_client():
    """JAX's coordination-service client, or None when `jax.distributed` is not initialised."""
    from jax._src import distributed  # the public API has no accessor for the client

    return distributed.global_state.client


class PreemptionWatcher:
    """`check()` → True once, on every host at the same check, after a SIGTERM on any host.

    Use: build it before the restore, call `check()` at every agreed point (the same sequence on
    every host), and `close()` at the end (restores the previous Python handler, if one was set).
    After the first True, `check()` keeps returning True (`requested`).
    """

    def __init__(self):
        self.requested = False
        self.checks = 0
        self.ctrl_c = False  # a Ctrl-C (SIGINT) of this process asked for the stop
        self._signalled = False
        self._previous = None
        self._previous_sigint = None
        # 'jax': JAX's preemption service; 'signal': our Python handler; 'off': nothing to ask.
        self.mode = "jax" if distributed_client() is not None else "signal"
        if self.mode == "jax" and not _service_enabled():
            log.warning(
                "jax_enable_preemption_service is off: SIGTERM ends the processes "
                "without a checkpoint. Turn it on to checkpoint on preemption."
            )
            self.mode = "off"
        elif self.mode == "signal" and threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._record)  # only without a distributed client
        elif self.mode == "signal":
            log.warning("not in the main thread: SIGTERM will not trigger a checkpoint.")
            self.mode = "off"
        self._wakeup = None
        if self.mode != "off" and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._ctrl_c)
            self._wakeup = _SecondCtrlC().start()

    @property
    def reason(self) -> str:
        """What stopped the run, for the messages: 'interrupted (Ctrl-C)' or 'preempted
        (SIGTERM)'."""
        return "interrupted (Ctrl-C)" if self.ctrl_c else "preempted (SIGTERM)"

    @property
    def status(self) -> str:
        """The run's status once stopped: 'interrupted' (Ctrl-C) or 'preempted'."""
        return "interrupted" if self.ctrl_c else "preempted"

    def _record(self, signum, frame) -> None:
        self._signalled = True

    def _ctrl_c(self, signum, frame) -> None:
        if self.ctrl_c:  # the second one: stop now, without a traceback
            _exit_at_once()
        self.ctrl_c = True
        if self.mode == "jax":  # JAX's service agrees the stop with every host
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._signalled = True

    def check(self) -> bool:
        """Whether to stop here (checkpoint, then exit); the same answer on every host."""
        if self.requested:
            return True
        self.checks += 1
        if self.mode == "jax":
            self.requested = bool(multihost_utils.reached_preemption_sync_point(self.checks))
        elif self.mode == "signal":
            self.requested = self._signalled
        return self.requested

    def raise_if_preempted(self) -> None:
        """`check()`, raising `Preempted` when it says stop (for evaluation loops)."""
        if self.check():
            raise Preempted("preemption sync point reached during evaluation")

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
        if self._wakeup is not None:
            self._wakeup.close()
            self._wakeup = None


def _exit_at_once() -> None:
    os.write(
        sys.stderr.fileno(),
        b"\nsecond Ctrl-C: stopped at once, without a new checkpoint. Rerun the same command "
        b"to resume from the last one.\n",
    )
    os._exit(CTRL_C_EXIT_CODE)


class _SecondCtrlC:
    """A daemon thread reading the signal numbers of `signal.set_wakeup_fd`: at the second
    SIGINT it ends the process (module docstring)."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="dnl_jax-ctrl-c", daemon=True)

    def start(self) -> _SecondCtrlC:
        self._thread.start()
        return self

    def _run(self) -> None:
        count = 0
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:  # closed
                return
            count += data.count(bytes([signal.SIGINT]))
            if count >= 2:
                _exit_at_once()

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)  # the thread reads the end of the pipe and returns
        self._thread.join(timeout=1)
        os.close(self._read)


def _service_enabled() -> bool:
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager is not None


def mark_interrupted_evaluation(workdir: str, step: int) -> None:
    """Records (process 0) that the evaluation after `step` did not finish."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, INTERRUPTED_EVALUATION), "w") as file:
            file.write(str(step))


def interrupted_evaluation(workdir: str) -> int | None:
    """The step whose evaluation a preemption interrupted, or None."""
    path = os.path.join(workdir, INTERRUPTED_EVALUATION)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return int(file.read().strip() or -1)


def clear_interrupted_evaluation(workdir: str) -> None:
    """Removes the mark once every host has read it."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dnl_jax read the interrupted evaluation mark")
    if jax.process_index() == 0:
        os.remove(os.path.join(workdir, INTERRUPTED_EVALUATION))
