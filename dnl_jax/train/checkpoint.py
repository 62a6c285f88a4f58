"""Checkpoints with orbax's CheckpointManager, and preemption (SIGTERM) handling.

One checkpoint = one step directory `workdir/checkpoints/<step>/` with three items:
    state  TrainState (params, batch_stats, opt_state, step, rng)       ocp StandardSave
    data   the training iterator's position, one JSON file per host    grain CheckpointSave
    meta   model name, classes and parameter shapes                    ocp JsonSave
Saved every `every_steps`, at the end and on SIGTERM; kept: the last `keep` plus the best by
the task's val metric (`best_metric`: 'val_miou' for segmentation, 'val_accuracy' for
classification; higher is better). Orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and the next run resumes from the last
complete one.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies


def model_signature(model_name: str, num_classes: int, params) -> dict:
    """What must match for a checkpoint to belong to this model: JSON-able dict."""
    shapes = {jax.tree_util.keystr(path): list(np.shape(leaf))
              for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    return {"model": model_name, "num_classes": int(num_classes), "param_shapes": shapes}


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` (see the module docstring)."""

    def __init__(self, directory: str, *, every_steps: int, keep: int, keep_best: bool,
                 best_metric: str = "val_miou"):
        self.best_metric = best_metric
        # Checkpoints saved under another metric name (another task) rank last.
        rank = lambda metrics: metrics.get(best_metric, float("-inf"))  # noqa: E731
        keepers = [policies.LatestN(n=keep)]
        if keep_best:
            keepers.append(policies.BestN(get_metric_fn=rank, n=1,
                                          keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            # best_fn (ranking is the preservation policy's) makes orbax write each step's
            # metrics to disk, so a resumed run still knows which checkpoint is the best.
            best_fn=rank if keep_best else None,
            save_decision_policy=policies.FixedIntervalPolicy(every_steps),
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            # Synchronous: a save that returned is complete, which SIGTERM handling relies on.
            enable_async_checkpointing=False)
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether the interval policy saves at `step`."""
        return self.manager.should_save(step)

    def save(self, step: int, state, iterator, signature: dict, *,
             metric: Optional[float] = None, force: bool = False) -> bool:
        """Saves if the interval policy says so (or `force`); returns whether it saved.
        `metric`: the value of `best_metric` at this step (None: not evaluated)."""
        metrics = ({self.best_metric: float(metric)}
                   if metric is not None and np.isfinite(metric) else None)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(iterator),
                                  meta=ocp.args.JsonSave(signature))
        saved = self.manager.save(step, args=args, metrics=metrics, force=force)
        self.manager.wait_until_finished()
        return saved

    def check_signature(self, step: int, signature: dict) -> None:
        """Raises ValueError when the checkpoint at `step` is of another model."""
        saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        saved = saved.meta
        if saved != signature:
            what = ("model " + saved.get("model", "?") if saved.get("model") != signature["model"]
                    else "parameter shapes or classes")
            raise ValueError(
                f"{self.directory} holds a checkpoint (step {step}) of a different {what} than "
                f"config.model.name={signature['model']!r} with {signature['num_classes']} "
                "classes; nothing was overwritten. Use a new --workdir, or the matching config.")

    def restore(self, step: int, target, iterator) -> Any:
        """Restores the state (into `target`'s structure/shardings) and, in place, the data
        iterator's position."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=grain.checkpoint.CheckpointRestore(iterator)))
        return restored.state

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_variables(path: str) -> dict:
    """{'params', 'batch_stats'} as numpy trees from a saved state directory (a checkpoint's
    `<step>/state`, or any orbax PyTree checkpoint holding those keys)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    if not os.path.isdir(path):
        raise ValueError(f"config.init_from={path!r} is not a directory; give a checkpoint step "
                         "directory such as runs/demo/checkpoints/100.")
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            checkpointer.metadata(path).item_metadata.tree)
    tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    if "params" not in tree:
        raise ValueError(f"config.init_from={path!r} holds no 'params'; keys: {list(tree)}.")
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}


class PreemptionWatcher:
    """Records SIGTERM so the training loop can checkpoint and stop at the next step boundary.

    With several processes every host must agree to stop at the same step (the save is a
    collective), so `should_stop()` takes the OR over hosts.
    """

    def __init__(self):
        self.requested = False
        self._previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: Python only lets the main thread install it
            self._previous = None
            logging.warning("not in the main thread: SIGTERM will not trigger a checkpoint.")

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array(int(self.requested), np.int32))
        return bool(np.max(flags))

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
