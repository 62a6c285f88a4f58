"""What the command lines share: their output is their own.

Libraries log on every run: orbax its checkpoint events and read throughput, jax its backend
probing ("Unable to initialize backend 'tpu'"), tfds its builders. At the default level the
commands show only records at ERROR and above from them; dnl_jax's own logger keeps INFO. The absl
commands (main, evaluate, analyze) take absl's `--verbosity` (e.g. `--verbosity=0` for INFO); the
argparse ones (convert, prepare, pretrained) take `--log_level`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence

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


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """The start of an argparse command: adds `--log_level` to `parser`, parses `argv` (None:
    the command line) and shows the libraries' log records at the level given."""
    add_log_level_argument(parser)
    args = parser.parse_args(argv)
    set_library_log_level(args.log_level)
    return args


def config_file_problem(argv: list[str], flag: str = "config") -> str | None:
    """What is wrong with the file of `--config PATH` / `--config=PATH` in `argv` (None: nothing,
    or no such flag): missing, unreadable, a syntax error (with its line), an error while it
    runs, or no `get_config`. Checked before ml_collections loads it, whose failure is a double
    traceback. `PATH:ARGS` (ml_collections' config argument) is checked as PATH."""
    path = _flag_value(argv, flag)
    if path is None:
        return None
    path = path.split(":", 1)[0]
    where = f"--{flag}={path}"
    if not os.path.exists(path):
        return f"{where}: no such file. Give the path of a config file, e.g. experiments/configs/."
    if not os.path.isfile(path):
        return f"{where} is not a file; give a config file such as experiments/configs/NAME.py."
    try:
        with open(path, encoding="utf-8") as file:
            source = file.read()
    except (OSError, UnicodeDecodeError) as error:
        return f"{where} cannot be read: {type(error).__name__}: {error}"
    try:
        code = compile(source, path, "exec")
    except SyntaxError as error:
        return f"{where}, line {error.lineno}: SyntaxError: {error.msg}; fix the file."
    namespace: dict = {"__name__": "dnl_jax_config_check", "__file__": path}
    try:
        exec(code, namespace)  # noqa: S102 - the user's own config file, as ml_collections runs it
    except Exception as error:  # noqa: BLE001 - any error of the user's file, as one line
        line = _line_in(error, path)
        return f"{where}{line}: {type(error).__name__}: {error}; fix the file."
    if not callable(namespace.get("get_config")):
        return f"{where} defines no get_config(); a config file returns its ConfigDict from it."
    return None


def _flag_value(argv: list[str], flag: str) -> str | None:
    for position, arg in enumerate(argv):
        if arg in (f"--{flag}", f"-{flag}") and position + 1 < len(argv):
            return argv[position + 1]
        for prefix in (f"--{flag}=", f"-{flag}="):
            if arg.startswith(prefix):
                return arg[len(prefix) :]
    return None


def _line_in(error: BaseException, path: str) -> str:
    """', line N' of the deepest frame of `path` in the error's traceback ('' if none)."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename == path
    ]
    return f", line {lines[-1]}" if lines else ""


def exit_on_bad_config_file(command: str, argv: list[str] | None = None) -> None:
    """Exits with one line `COMMAND: ...` (status 1) when the --config file does not load."""
    problem = config_file_problem(list(sys.argv if argv is None else argv))
    if problem:
        sys.exit(f"{command}: {problem}")


@contextlib.contextmanager
def exit_quietly_on_ctrl_c(command: str) -> Iterator[None]:
    """A Ctrl-C outside the training loop's own handling (imports, config, start-up): one line
    and exit status 130, no KeyboardInterrupt traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print(
            f"\n{command}: interrupted (Ctrl-C) before training started; nothing was saved.",
            file=sys.stderr,
        )
        sys.exit(130)
