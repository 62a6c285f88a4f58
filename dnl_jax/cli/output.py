"""What the command lines share: their output is their own.

Libraries log on every run: orbax its checkpoint events and read throughput, jax its backend
probing ("Unable to initialize backend 'tpu'"), tfds its builders. At the default level the
commands show only records at ERROR and above from them; dnl_jax's own logger keeps INFO. The absl
commands (main, evaluate, analyze) take absl's `--verbosity` (e.g. `--verbosity=0` for INFO); the
argparse ones (convert, prepare, pretrained) take `--log_level`.
"""

from __future__ import annotations

import argparse
import logging

from absl import logging as absl_logging

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "error"
_ABSL_LEVELS = {
    "debug": absl_logging.DEBUG,
    "info": absl_logging.INFO,
    "warning": absl_logging.WARNING,
    "error": absl_logging.ERROR,
}


def set_library_log_level(level: str = DEFAULT_LOG_LEVEL) -> None:
    """Shows library log records at `level` and above; dnl_jax's own records from INFO up."""
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; choose one of {LOG_LEVELS}")
    absl_logging.set_verbosity(_ABSL_LEVELS[level])
    logging.getLogger().setLevel(getattr(logging, level.upper()))
    logging.getLogger("dnl_jax").setLevel(min(getattr(logging, level.upper()), logging.INFO))


def quiet_absl_command(verbosity_flag) -> None:
    """For absl commands: library logs at ERROR unless `--verbosity` was given on the command line
    (`verbosity_flag` is `flags.FLAGS['verbosity']`); dnl_jax's own logger at INFO either way."""
    if verbosity_flag.present:
        logging.getLogger("dnl_jax").setLevel(logging.INFO)
    else:
        set_library_log_level(DEFAULT_LOG_LEVEL)


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    """`--log_level` for the argparse commands."""
    parser.add_argument(
        "--log_level",
        choices=LOG_LEVELS,
        default=DEFAULT_LOG_LEVEL,
        help="level of the libraries' log records shown (default: %(default)s; "
        "dnl_jax's own messages always show)",
    )
