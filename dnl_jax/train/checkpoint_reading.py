"""Reading a checkpoint step for the commands that apply it (evaluate, analyze): the variables,
checked against the config's model before anything runs. Every bad input is a ValueError with
one line: a path that is no step, another model's checkpoint (the first mismatching parameter,
and the model it was saved for), a damaged one (checkpoint_variables.DamagedCheckpoint: the
newest good step beside it)."""

from __future__ import annotations

import json
import os

import jax

from dnl_jax.models.registry import parameter_mismatch
from dnl_jax.train import step as step_lib
from dnl_jax.train.checkpoint_variables import load_variables
from dnl_jax.train.setup import make_init_fn


def _saved_model(path: str) -> str:
    """' (saved for model M with K classes)' from the checkpoint's meta item, when readable."""
    try:
        with open(os.path.join(path, "meta", "metadata")) as f:
            meta = json.load(f)
        return f" (it was saved for model {meta['model']!r} with {meta['num_classes']} classes)"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def load_checked_variables(config, built, path: str) -> dict:
    """{'params', 'batch_stats'} of checkpoint step `path`; ValueError when they do not fit
    the config's model `built` (`tasks.build(config)`; names the first mismatching parameter)."""
    optimizer = step_lib.make_optimizer(config.optimizer, config.total_steps)
    expected = jax.eval_shape(make_init_fn(optimizer, built, config.seed))
    try:
        variables = load_variables(path)
    except Exception as error:  # orbax's own errors on unreadable files, as one line
        if isinstance(error, ValueError):
            raise
        raise ValueError(
            f"--checkpoint={path} could not be read: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    mismatch = parameter_mismatch(variables["params"], expected.params) or parameter_mismatch(
        variables["batch_stats"], expected.batch_stats
    )
    if mismatch:
        raise ValueError(
            f"--checkpoint={path} does not fit config.model.name={config.model.name!r} with "
            f"config.data.num_classes={config.data.num_classes}{_saved_model(path)}: "
            f"{mismatch}. Pass the config (and model.kwargs) it was trained with."
        )
    return variables
