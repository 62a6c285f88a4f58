"""Fatal paths end in one line: the library's own report of a failure we report is not shown, and
nothing follows our line.

- `reported_here(handled)`: around one operation (a save, a restore, a checkpoint read). Library
  log records at ERROR and above (orbax logs the exception of each of its save threads, with a
  traceback) are held back while it runs. If the operation fails with an error that
  `handled(error)` says the caller turns into its own line, they are dropped; on success, or on
  an error nobody handles, they are emitted as they were. After a handled failure, the failed
  operation's aftermath is dropped too, up to the exit: the library records whose exception is
  of the handled kind (the other save threads of the failed save, asyncio's "Task exception was
  never retrieved" for its writes, logged when they are collected), and
  `RuntimeError('Event loop is closed')` from the callbacks of writes still in flight when orbax
  closed its event loop (printed through `sys.unraisablehook`). Any other library error still
  shows. Nothing is held when the user asked for the libraries' records (`--verbosity`,
  `--log_level` below error): then everything shows.
- `close_all(closers)`: closes everything (checkpoint manager, data iterator, writer) before the
  message, each close on its own, so that one failing close (after a failure) hides nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

# The orbax aftermath of a failed save (see the module docstring).
_AFTERMATH = ("Event loop is closed",)


def libraries_quiet() -> bool:
    """Whether the libraries' records are hidden below ERROR (the commands' default): only then
    is a report we make ourselves shown instead of theirs."""
    return logging.getLogger().getEffectiveLevel() >= logging.ERROR


class _HoldLibraryErrors(logging.Filter):
    """Holds library records at ERROR and above (dnl_jax's own always pass)."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and not record.name.startswith("dnl_jax"):
            self.held.append(record)
            return False
        return True


class _DropReported(logging.Filter):
    """Drops library records at ERROR and above whose exception `handled` says we reported."""

    def __init__(self, handled: Callable[[BaseException], bool]):
        super().__init__()
        self.handled = handled

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or record.name.startswith("dnl_jax") or error is None:
            return True
        try:
            return not self.handled(error)
        except Exception:  # noqa: BLE001 - a filter must never fail the logging call
            return True


def _holders() -> list:
    """Where records pass: the root logger's handlers, and the loggers of orbax (absl) and
    asyncio themselves (without handlers, Python prints through `logging.lastResort`)."""
    return [*logging.getLogger().handlers, logging.getLogger("absl"), logging.getLogger("asyncio")]


@contextlib.contextmanager
def reported_here(handled: Callable[[BaseException], bool] = lambda error: True) -> Iterator[None]:
    """Runs the `with` body with the libraries' ERROR records held (module docstring)."""
    if not libraries_quiet():
        yield
        return
    holder = _HoldLibraryErrors()
    places = _holders()
    for place in places:
        place.addFilter(holder)
    hook, held_unraisable = sys.unraisablehook, []
    sys.unraisablehook = lambda info: (
        held_unraisable.append(info) if _is_aftermath(info) else hook(info)
    )
    dropped = False
    try:
        yield
    except BaseException as error:
        dropped = handled(error)
        if dropped:
            for place in places:
                place.addFilter(_DropReported(handled))
        raise
    finally:
        for place in places:
            place.removeFilter(holder)
        sys.unraisablehook = hook
        if dropped:
            drop_aftermath()
        else:
            for record in holder.held:
                logging.getLogger(record.name).handle(record)
            for info in held_unraisable:
                hook(info)


def _is_aftermath(unraisable) -> bool:
    value = getattr(unraisable, "exc_value", None)
    return isinstance(value, RuntimeError) and any(text in str(value) for text in _AFTERMATH)


def drop_aftermath() -> None:
    """From now on, `sys.unraisablehook` drops the aftermath of a failed orbax operation (once
    installed, it stays: the writes still in flight finish at any time, up to the exit)."""
    hook = sys.unraisablehook
    if getattr(hook, "_dnl_jax_aftermath", False):
        return

    def unraisable(unraisable_info) -> None:
        if not _is_aftermath(unraisable_info):
            hook(unraisable_info)

    unraisable._dnl_jax_aftermath = True  # type: ignore[attr-defined]
    sys.unraisablehook = unraisable


def close_all(closers: list[tuple[str, Callable[[], object]]], *, failing: bool) -> None:
    """Calls each `(name, close)` in order. While a failure is on its way out (`failing`), an
    error in a close is logged at debug level (the failure is what the user must see);
    otherwise the first close error is raised once every close ran."""
    first = None
    for name, close in closers:
        try:
            close()
        except Exception as error:  # noqa: BLE001 - any library error of a close
            if failing:
                log.debug("closing %s after a failure: %s: %s", name, type(error).__name__, error)
            elif first is None:
                first = error
    if first is not None:
        raise first
