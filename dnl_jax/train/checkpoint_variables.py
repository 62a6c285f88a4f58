"""The variables of a saved checkpoint step, read back as saved: `load_variables` restores a
step's `state` item (or any orbax PyTree checkpoint holding 'params') as numpy trees, checks
every array it read (the optimizer state too) against the step's `checksums` item when it has
one, and returns {'params', 'batch_stats'}; a step that does not read back as saved (missing,
truncated or changed files, in any array) is a `DamagedCheckpoint` whose message names the
newest good step beside it. (Checking only the returned arrays let bytes changed in an
optimizer array pass unseen when its block was stored uncompressed, while the same change in a
compressed block failed the read: whether a damaged step loaded depended on where the damage
fell.) Used by the commands and the trainer's `init_from` (checkpoint.py re-exports both names;
saving and resuming live there).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from dnl_jax.train import checkpoint_faults as faults
from dnl_jax.train import checksums, shutdown
from dnl_jax.train.checkpoint_paths import saved_steps


class DamagedCheckpoint(ValueError):
    """A checkpoint step that does not read back as saved (the message names the newest good
    step next to it)."""


def load_variables(path: str) -> dict:
    """{'params', 'batch_stats'} as numpy trees from a saved state directory (a checkpoint's
    `<step>/state`, or any orbax PyTree checkpoint holding those keys), checked against the
    step's checksums when it has them. DamagedCheckpoint when it does not read back (missing,
    truncated or changed files), naming the newest good step beside it."""
    path = os.path.abspath(path)
    step_dir = path if os.path.isdir(os.path.join(path, "state")) else os.path.dirname(path)
    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    if not os.path.isdir(path):
        raise ValueError(
            f"config.init_from={path!r} is not a directory; give a checkpoint step "
            "directory such as runs/demo/checkpoints/100."
        )
    try:
        with shutdown.reported_here(faults.shows_damage):
            tree = _read_verified(path, step_dir)
    except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many types
        if not faults.shows_damage(error):
            raise
        raise DamagedCheckpoint(
            f"{step_dir} is damaged ({type(error).__name__}: {faults.first_line(error)}); "
            f"{_newest_good(step_dir)}"
        ) from None
    if "params" not in tree:
        raise ValueError(f"config.init_from={path!r} holds no 'params'; keys: {list(tree)}.")
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}


def _read_verified(state_dir: str, step_dir: str) -> dict:
    """The state PyTree as numpy, every array checked against the step's checksums item (when
    the step has one)."""
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
        checkpointer.metadata(state_dir).item_metadata.tree,
    )
    tree = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    saved = os.path.join(step_dir, checksums.ITEM, "metadata")
    if os.path.exists(saved):
        with open(saved, encoding="utf-8") as file:
            expected = json.load(file)
        checksums.verify(tree, expected, where=f"checkpoint {step_dir}")
    return tree


def _newest_good(step_dir: str) -> str:
    """'the newest good checkpoint beside it is step N (PATH)': the newest other step of the
    same directory that reads back as saved (or says there is none)."""
    directory = os.path.dirname(step_dir)
    steps = saved_steps(directory)
    others = [s for s in reversed(steps) if str(s) != os.path.basename(step_dir)]
    for step in others:
        candidate = os.path.join(directory, str(step))
        try:
            with shutdown.reported_here():
                _read_verified(os.path.join(candidate, "state"), candidate)
        except Exception:  # noqa: BLE001 - any failure: not a good one
            continue
        return f"the newest good checkpoint beside it is step {step} ({candidate})."
    return f"no other checkpoint in {directory} reads back either."


__all__ = ["DamagedCheckpoint", "load_variables"]
