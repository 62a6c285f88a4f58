"""What the commands parse before absl or ml_collections do: `--config.model.kwargs.NAME=VALUE`
(model.kwargs is free-form, so ml_collections cannot override it) and the check of `--config.KEY`
keys (one line naming a typo or a replaced key instead of a traceback)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from dnl_jax.train.config import CONFIG_FLAG, MODEL_KWARGS_FLAG, _flatten, base_config, check_key


def check_override_flags(argv: Sequence[str]) -> None:
    """ValueError for a `--config.KEY=VALUE` argument whose KEY is not a key of `base_config()`
    (checked before ml_collections parses the flags, which would end in a traceback)."""
    known = None
    for arg in argv:
        if not arg.startswith(CONFIG_FLAG) or arg.startswith(MODEL_KWARGS_FLAG):
            continue
        path = arg[len(CONFIG_FLAG) :].partition("=")[0]
        if known is None:
            known = _flatten(base_config())
        check_key(path, known)


def pop_model_kwargs_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Splits `--config.model.kwargs.NAME=VALUE` flags off `argv` (ml_collections only overrides
    keys the config file already has, and model.kwargs is free-form). VALUE is a Python literal
    (`0`, `0.5`, `True`, `(1, 2)`, `{'thresh': 0.7, 'min_kept': 100000}`) or else a string.
    Returns (the other arguments, {NAME: value}); ValueError for a flag without '=VALUE'."""
    rest, kwargs = [], {}
    for arg in argv:
        if not arg.startswith(MODEL_KWARGS_FLAG):
            rest.append(arg)
            continue
        name, sep, text = arg[len(MODEL_KWARGS_FLAG) :].partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(
                f"{arg!r}: write --config.model.kwargs.NAME=VALUE, e.g. "
                "--config.model.kwargs.dropout_rate=0."
            )
        try:
            kwargs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[name] = text
    return rest, kwargs


def take_model_kwargs_flags(program: str) -> dict[str, Any]:
    """`pop_model_kwargs_flags(sys.argv)` for a command line, before absl parses its flags:
    sys.argv keeps the other flags (config_flags reads its overrides from sys.argv itself) and
    the model's arguments are returned; a malformed flag, or an override of a key that is not
    one (a typo, a replaced key), exits with one line naming it and what to use."""
    try:
        argv, kwargs = pop_model_kwargs_flags(sys.argv)
        check_override_flags(argv)
    except ValueError as error:
        sys.exit(f"{program}: {error}")
    sys.argv[:] = argv
    return kwargs


def set_model_kwargs(config: ml_collections.ConfigDict, kwargs: dict[str, Any]) -> None:
    """Sets `config.model.kwargs[NAME] = value` for each entry (the model checks the names and
    values when it is built: an unknown name is refused there, listing the valid ones)."""
    with config.unlocked():
        for name, value in kwargs.items():
            config.model.kwargs[name] = value
