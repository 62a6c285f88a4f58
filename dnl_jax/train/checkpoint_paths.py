"""The one resolver of a `--checkpoint` argument (the evaluate and analyze commands, and the
analysis experiment): a step directory as the trainer writes it (`WORKDIR/checkpoints/STEP`,
holding `state`), or a `checkpoints/` directory, which means its latest step."""

from __future__ import annotations

import os


def saved_steps(directory: str) -> list[int]:
    """The steps saved under `directory` (sub-directories named by a number that hold 'state'),
    ascending; [] when there are none or `directory` is not one."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name)
        for name in os.listdir(directory)
        if name.isdigit() and os.path.isdir(os.path.join(directory, name, "state"))
    )


def step_directory(path: str, flag: str = "--checkpoint") -> str:
    """`path` made absolute when it is a step directory; its latest step when it is a
    `checkpoints/` directory. ValueError naming the problem otherwise (with the steps next to
    it, if any)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        return path
    steps = saved_steps(path)
    if steps:
        return os.path.join(path, str(steps[-1]))
    parent = os.path.dirname(path)
    nearby = f" Steps in {parent}: {saved_steps(parent)}." if saved_steps(parent) else ""
    what = (
        "is not a checkpoint step directory (no 'state' in it)"
        if os.path.isdir(path)
        else "does not exist"
    )
    raise ValueError(
        f"{flag}={path} {what}; give a step directory such as "
        f"runs/demo-latest/checkpoints/1000 (or its checkpoints/ directory: the "
        f"latest step).{nearby}"
    )


__all__ = ["saved_steps", "step_directory"]
