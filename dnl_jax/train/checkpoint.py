"""Checkpoints with orbax's CheckpointManager (preemption itself: preemption.py).

One checkpoint = one step directory `workdir/checkpoints/<step>/` with three items:
    state  TrainState (params, batch_stats, opt_state, step, rng)       ocp StandardSave
    data   the training iterator's position, one JSON file per host    grain CheckpointSave
    meta   model name, classes and parameter shapes                    ocp JsonSave
    checksums  a checksum of every array of `state` (checksums.py)      ocp JsonSave
Saved every `every_steps` or `every_seconds` (whichever first), at the end and on SIGTERM;
kept: the last `keep` plus the best by the task's val metric (`best_metric`: 'val_miou' for
segmentation, 'val_accuracy' for classification; higher is better). Orbax writes into a temporary
directory and renames it when complete, so a process killed mid-save leaves the previous
checkpoints intact.

A newest checkpoint that still fails to read (files truncated or corrupted after the rename, e.g.
by a full disk or a crash before the data reached the disk) is not a dead end:
`Checkpointer.restore_latest` resumes from the newest checkpoint that restores and moves the newer
ones aside into `<directory>-unrestorable/`, with a warning naming each step and its new place.
Nothing is deleted. A checkpoint of another model is an error, never skipped; an error that shows
no damage (out of memory, permissions) stops the run and moves nothing (checkpoint_faults.py).
Unfinished saves of a killed run are removed at start-up; a full disk stops with one line.
A state whose arrays read back with other checksums than saved is damage like a truncated file
(a step without the item, saved before checksums existed, is not checked). Library errors that
these paths report themselves are not shown twice (shutdown.py). Reading one step's variables
back as saved (`load_variables`, `DamagedCheckpoint`) lives in checkpoint_variables.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from dnl_jax.train import checkpoint_faults as faults
from dnl_jax.train import checksums, shutdown
from dnl_jax.train.checkpoint_variables import DamagedCheckpoint, load_variables

# Several hosts compare clocks for `every_seconds` only every this many steps (a broadcast).
TIME_CHECK_EVERY_STEPS = 10


class OtherModelError(ValueError):
    """The checkpoint belongs to another model (or classes): never set aside."""


class RestoreFailed(RuntimeError):
    """A restore failed in a way that shows no damage (out of memory, permissions): the one
    line for the user; nothing was moved."""


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, minus its own question to JAX's preemption service: orbax would pass
    step numbers as the sync counter, the trainer's watcher counts checks (preemption.py)."""

    def reached_preemption(self, step: int) -> bool:
        return False


def model_signature(model_name: str, num_classes: int, params) -> dict:
    """What must match for a checkpoint to belong to this model: JSON-able dict."""
    shapes = {
        jax.tree_util.keystr(path): list(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    return {"model": model_name, "num_classes": int(num_classes), "param_shapes": shapes}


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` (see the module docstring)."""

    def __init__(
        self,
        directory: str,
        *,
        every_steps: int,
        keep: int,
        keep_best: bool,
        best_metric: str = "val_miou",
        every_seconds: float = 0,
    ):
        self.best_metric = best_metric
        self.every_seconds = float(every_seconds)
        self._last_save_time = time.monotonic()
        self._failed_save: int | None = None  # a save that ran out of space
        # Checkpoints saved under another metric name (another task) rank last.
        rank = lambda metrics: metrics.get(best_metric, float("-inf"))  # noqa: E731
        keepers = [policies.LatestN(n=keep)]
        if keep_best:
            keepers.append(
                policies.BestN(get_metric_fn=rank, n=1, keep_checkpoints_without_metrics=False)
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn (ranking is the preservation policy's) makes orbax write each step's
            # metrics to disk, so a resumed run still knows which checkpoint is the best.
            best_fn=rank if keep_best else None,
            save_decision_policy=policies.FixedIntervalPolicy(every_steps),
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            # Synchronous: a save that returned is complete, which SIGTERM handling relies on.
            enable_async_checkpointing=False,
        )
        self.directory = os.path.abspath(directory)
        faults.remove_unfinished_saves(self.directory)
        try:
            self.manager = _Manager(self.directory, options=options)
        except Exception as error:  # noqa: BLE001 - orbax raises json, unicode, OS errors here
            # Orbax reads every step's metrics when it opens the directory; move aside the steps
            # whose records do not parse, then open it again.
            if not self._set_aside_unreadable_records(error):
                raise
            self.manager = _Manager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether to save at `step`: every `every_steps` (orbax's interval policy) or when
        `every_seconds` passed since the last save, whichever comes first. The clock is process
        0's: with several hosts it is broadcast every TIME_CHECK_EVERY_STEPS steps, never per
        step, so all hosts decide alike."""
        return self.manager.should_save(step) or self._time_due(step)

    def _time_due(self, step: int) -> bool:
        if self.every_seconds <= 0:
            return False
        if jax.process_count() > 1 and step % TIME_CHECK_EVERY_STEPS:
            return False
        due = time.monotonic() - self._last_save_time >= self.every_seconds
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(np.array(due)))
        return due

    def save(
        self,
        step: int,
        state,
        iterator,
        signature: dict,
        *,
        metric: float | None = None,
        force: bool = False,
    ) -> bool:
        """Saves if the interval policy says so (or `force`); returns whether it saved.
        `metric`: the value of `best_metric` at this step (None: not evaluated)."""
        metrics = (
            {self.best_metric: float(metric)}
            if metric is not None and np.isfinite(metric)
            else None
        )
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(signature),
            **{checksums.ITEM: ocp.args.JsonSave(checksums.tree_checksums(state))},
        )
        try:
            with shutdown.reported_here(faults.is_disk_full):
                saved = self.manager.save(step, args=args, metrics=metrics, force=force)
                self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - orbax wraps the OSError in several types
            if not faults.is_disk_full(error):
                raise
            self._failed_save = step
            with contextlib.suppress(Exception), shutdown.reported_here(faults.is_disk_full):
                self.manager.wait_until_finished()  # its other threads: done writing
            faults.remove_unfinished_saves(self.directory, step, reported=True)
            raise faults.DiskFull(
                faults.disk_full_message(
                    self.directory, step, max(_step_numbers(self.directory), default=None)
                )
            ) from None
        if saved:
            self._last_save_time = time.monotonic()
        return saved

    def check_signature(self, step: int, signature: dict) -> None:
        """Raises ValueError when the checkpoint at `step` is of another model."""
        self._compare_signature(step, self._read_signature(step), signature)

    def _read_signature(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def _compare_signature(self, step: int, saved: dict, signature: dict) -> None:
        if saved != signature:
            what = (
                "model " + saved.get("model", "?")
                if saved.get("model") != signature["model"]
                else "parameter shapes or classes"
            )
            raise OtherModelError(
                f"{self.directory} holds a checkpoint (step {step}) of a different {what} than "
                f"config.model.name={signature['model']!r} with {signature['num_classes']} "
                "classes; nothing was overwritten. Use a new --workdir, or the matching config."
            )

    def restore(self, step: int, target, iterator) -> Any:
        """Restores the state (into `target`'s structure/shardings) and, in place, the data
        iterator's position; checksums.ChecksumMismatch when an array differs from the saved
        one (a step saved with checksums)."""
        items = {
            "state": ocp.args.StandardRestore(target),
            "data": grain.checkpoint.CheckpointRestore(iterator),
        }
        if self.has_checksums(step):
            items[checksums.ITEM] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if checksums.ITEM in items:
            checksums.verify(
                restored.state,
                restored[checksums.ITEM],
                where=f"checkpoint step {step} in {self.directory}",
            )
        return restored.state

    def has_checksums(self, step: int) -> bool:
        return os.path.isdir(os.path.join(self.directory, str(step), checksums.ITEM))

    def restore_latest(self, target, iterator, signature: dict) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores, the data iterator's position
        restored in place; None when the directory holds no checkpoint.

        A newer step whose error shows damage (`checkpoint_faults.shows_damage`: missing,
        truncated or corrupted files) is moved aside (`_move_aside`, with a warning each) once
        an older one has restored. Any other error (out of memory, permission, a transient
        read error) is raised at once, naming the step, and nothing is moved. When no step
        restores, ValueError names each step's error and nothing is moved (a changed config
        fails every step the same way: that is no corruption). A readable checkpoint of another
        model raises ValueError (`check_signature`). Several hosts first check that they see
        the same steps, and at the end that they restored the same one (ValueError if not).
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        faults.agree(steps[0] if steps else -1, f"the newest checkpoint in {self.directory}")
        failed = []
        for step in steps:
            try:
                with shutdown.reported_here(_reported_restore_error):
                    self._compare_signature(step, self._read_signature(step), signature)
                    state = self.restore(step, target, iterator)
            except OtherModelError:
                raise  # another model's checkpoint: never skipped
            except Exception as error:  # noqa: BLE001 - orbax/tensorstore/grain raise many types
                self._keep_or_raise(step, error, failed)
                continue
            faults.agree(step, "the restored checkpoint step")
            for bad_step, error in failed:
                _move_aside(self.directory, bad_step, error)
            self.manager.reload()
            return step, state
        if failed:
            errors = "; ".join(
                f"step {step}: {type(error).__name__}: {faults.first_line(error)}"
                for step, error in failed
            )
            raise ValueError(
                f"no checkpoint in {self.directory} restores ({errors}); nothing was "
                "moved or deleted. Use a new --workdir, or the config that wrote "
                "them."
            )
        return None

    def _keep_or_raise(self, step: int, error: BaseException, failed: list) -> None:
        """Notes `step` as damaged, or raises when its error shows no damage."""
        if not faults.shows_damage(error):
            raise RestoreFailed(
                f"restoring checkpoint step {step} from {self.directory} failed with "
                f"{type(error).__name__}: {faults.first_line(error)}. This does not look like a "
                "damaged checkpoint (out of memory, permissions or a passing I/O error), so "
                "nothing was moved; fix the cause and rerun."
            ) from error
        failed.append((step, error))

    def _set_aside_unreadable_records(self, error: BaseException) -> list[int]:
        """Before the manager opens: sets aside the steps whose JSON records (orbax's step
        metadata and metrics) do not parse; returns their numbers."""
        bad = [
            step
            for step in _step_numbers(self.directory)
            if not _records_parse(os.path.join(self.directory, str(step)))
        ]
        for step in bad:
            _move_aside(self.directory, step, error)
        return bad

    def close(self) -> None:
        with shutdown.reported_here(faults.is_disk_full):  # a save's failure, reported
            self.manager.wait_until_finished()
        self.manager.close()
        if self._failed_save is not None:  # what its threads wrote after the first removal
            faults.remove_unfinished_saves(self.directory, self._failed_save, reported=True)


def _reported_restore_error(error: BaseException) -> bool:
    """Restore errors that `restore_latest` turns into its own warning or line."""
    return isinstance(error, OtherModelError) or faults.shows_damage(error)


def _move_aside(directory: str, step: int, error: BaseException) -> str:
    """Moves the unrestorable step `directory/<step>` to `<directory>-unrestorable/<step>[-N]`
    (kept for inspection, and out of the way of the step's next save), with a warning; returns
    the new path."""
    aside = directory + "-unrestorable"
    target = _free_path(os.path.join(aside, str(step)))
    if jax.process_index() == 0:
        os.makedirs(aside, exist_ok=True)
        os.rename(os.path.join(directory, str(step)), target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"dnl_jax set aside checkpoint {step}")
    logging.warning(
        "checkpoint step %d in %s does not restore (%s: %s); moved it to %s, nothing deleted.",
        step,
        directory,
        type(error).__name__,
        faults.first_line(error),
        target,
    )
    return target


def _step_numbers(directory: str) -> list[int]:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _records_parse(step_directory: str) -> bool:
    """Whether the step's small JSON records (`_CHECKPOINT_METADATA`, `metrics/metrics`) parse."""
    for name in ("_CHECKPOINT_METADATA", os.path.join("metrics", "metrics")):
        path = os.path.join(step_directory, name)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as file:
                    json.load(file)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                return False
    return True


def _free_path(path: str) -> str:
    """`path`, or `path-N` with the smallest N >= 2 that does not exist yet."""
    candidate, n = path, 2
    while os.path.exists(candidate):
        candidate, n = f"{path}-{n}", n + 1
    return candidate


__all__ = [
    "TIME_CHECK_EVERY_STEPS",
    "OtherModelError",
    "RestoreFailed",
    "model_signature",
    "Checkpointer",
    "DamagedCheckpoint",  # checkpoint_variables.py
    "load_variables",  # checkpoint_variables.py
]
