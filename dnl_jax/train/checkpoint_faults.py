"""What goes wrong with checkpoints on disk, and what the trainer does about it.

- Which restore errors show a damaged or incomplete checkpoint (`shows_damage`): those set the
  step aside; anything else (out of memory, permission, a transient I/O error) stops the run
  with that error and moves nothing.
- A full disk during a save (`is_disk_full`, `DiskFull`): the partial save is removed and the run
  stops with one line naming the last good checkpoint and the bytes needed.
- Unfinished saves (`*.orbax-checkpoint-tmp*`, left by a process killed mid-save): removed at
  start-up, with a log line (`remove_unfinished_saves`).
- Hosts agreeing on what they see (`agree`): one small collective at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

TMP_MARK = ".orbax-checkpoint-tmp"

# Errors that are about the machine or the moment, not the files: never a reason to set aside.
_NOT_DAMAGE_TYPES = (MemoryError, PermissionError, TimeoutError, ConnectionError, InterruptedError)
_NOT_DAMAGE_TEXT = (
    "resource_exhausted",
    "out of memory",
    "permission denied",
    "permission_denied",
    "unavailable",
    "deadline_exceeded",
    "timed out",
    "no space left",
    "cancelled",
    "aborted",
)
# Errors that show missing, truncated or corrupted files.
_DAMAGE_TYPES = (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, EOFError)
_DAMAGE_TEXT = (
    "data_loss",
    "corrupt",
    "decompress",  # a compressed chunk that no longer decodes (zstd: "unknown frame")
    "checksum",
    "truncat",
    "unexpected end",
    "not_found",
    "not found",
    "no such file",
    "does not exist",
    "invalid",
    "error parsing",
    "failed to decode",
    "failed to parse",
    "unexpected eof",
    "magic",
    "crc",
    "out_of_range",
    "expected",
    "mismatch",
)


def _chain(error: BaseException):
    """`error` and its causes/contexts."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def shows_damage(error: BaseException) -> bool:
    """Whether a restore error shows a damaged or incomplete checkpoint (module docstring).
    Anything not recognised as damage counts as not damage: nothing is moved on a guess."""
    chain = list(_chain(error))
    text = " ".join(str(e).lower() for e in chain)
    if any(isinstance(e, _NOT_DAMAGE_TYPES) for e in chain) or any(
        mark in text for mark in _NOT_DAMAGE_TEXT
    ):
        return False
    return any(isinstance(e, _DAMAGE_TYPES) for e in chain) or any(
        mark in text for mark in _DAMAGE_TEXT
    )


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (at most 200 characters), for one-line reports."""
    text = str(error).strip()
    return (text.splitlines() or [""])[0][:200]


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC anywhere in the error chain (an OSError's errno, or tensorstore's text)."""
    return any(
        getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        or "no space left on device" in str(e).lower()
        for e in _chain(error)
    )


class DiskFull(OSError):
    """A save ran out of disk space; the message is the one line for the user."""


def directory_bytes(path: str) -> int:
    """Total size of the files under `path` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.path.getsize(os.path.join(root, name))
    return total


def disk_full_message(directory: str, step: int, last_good: int | None) -> str:
    """'checkpoint step N did not fit ...': the last good step and the bytes needed (the size of
    the last good checkpoint, which the new one matches; the free space now)."""
    free = shutil.disk_usage(directory).free if os.path.isdir(directory) else 0
    if last_good is None:
        return (
            f"no space left on device while saving checkpoint step {step} in {directory} "
            f"({free} bytes free); the partial save was removed and there is no earlier "
            "checkpoint. Free space (or point --workdir elsewhere) and rerun."
        )
    needed = directory_bytes(os.path.join(directory, str(last_good)))
    return (
        f"no space left on device while saving checkpoint step {step} in {directory}: it "
        f"needs about {needed} bytes (the size of step {last_good}) and {free} are free. "
        f"The partial save was removed; the last good checkpoint is step {last_good} "
        f"({os.path.join(directory, str(last_good))}). Free space and rerun the same "
        "command to resume from it."
    )


def unfinished_saves(directory: str, step: int | None = None) -> list[str]:
    """Orbax temporary directories in `directory` (of `step` only, when given)."""
    if not os.path.isdir(directory):
        return []
    prefix = f"{step}{TMP_MARK}" if step is not None else None
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if TMP_MARK in name and (prefix is None or name.startswith(prefix))
    )


def remove_unfinished_saves(
    directory: str, step: int | None = None, *, reported: bool = False
) -> list[str]:
    """Removes the unfinished saves (process 0; the others wait for it); returns their paths.
    `reported`: the caller's own message says so (a failed save), so no warning of its own."""
    paths = unfinished_saves(directory, step)
    if paths and jax.process_index() == 0:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        (log.debug if reported else log.warning)(
            "removed %d unfinished checkpoint save(s) left by an interrupted run: %s",
            len(paths),
            ", ".join(os.path.basename(p) for p in paths),
        )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dnl_jax removed unfinished saves")
    return paths


def agree(value: int, what: str) -> None:
    """Raises ValueError when the hosts hold different integers `value` (e.g. the newest step
    each sees); a no-op with one process."""
    if jax.process_count() == 1:
        return
    values = np.asarray(multihost_utils.process_allgather(np.array(value, np.int64))).ravel()
    if len(set(values.tolist())) > 1:
        per_host = ", ".join(f"process {i}: {int(v)}" for i, v in enumerate(values))
        raise ValueError(
            f"the hosts disagree on {what} ({per_host}); every host must see the "
            "same checkpoint directory (a shared filesystem) and the same "
            "command. Nothing was restored or moved."
        )
