"""Resuming with a changed config: the new config is compared with the run's `config.json`.

A changed key that alters the training trajectory (schedule, optimizer, model, data, batch,
seed: everything not listed below) stops the run with one line listing old → new, unless
`--allow_config_change` is given; then the change is logged and appended to the
`config_history` list of `config.json` (step, time, {key: [old, new]}), so that the file says
which config trained which steps instead of being silently overwritten.

Keys that do not alter it pass silently: how often and what is evaluated, logged, drawn and
checkpointed, the distributed timeouts, where the data is read from and with how many workers,
the parallelism layout, and the initialisation keys (used only by a fresh run). `total_steps`
passes when the learning-rate schedule does not depend on it ('step'; 'poly' decays to it).
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_KEY = "config_history"
# Keys (or key prefixes, ending in '.') whose change leaves the trajectory as it was.
HARMLESS = (
    "attention_figure",
    "curves_figure",
    "progress_bar",
    "log_every_steps",
    "checkpoint.",
    "distributed.",
    "evals.",
    "data.data_dir",
    "data.worker_processes",
    "data.worker_threads",
    "mesh.",
    "parallelism",
    "init_from",
    "model.pretrained",
    "model.pretrained_dir",
)
_ABSENT = "(absent)"


class ConfigChanged(ValueError):
    """A resumed run's config changes its trajectory (the message is the one line)."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'optimizer.lr': 0.1, ...}: nested dicts to dotted keys (empty dicts stay values)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (old, new)} of the keys that differ (HISTORY_KEY left out)."""
    old_flat = flatten({k: v for k, v in old.items() if k != HISTORY_KEY})
    new_flat = flatten({k: v for k, v in new.items() if k != HISTORY_KEY})
    return {
        key: (old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT))
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key, _ABSENT) != new_flat.get(key, _ABSENT)
    }


def _is_harmless(key: str, old: dict, new: dict) -> bool:
    if key == "total_steps":  # only a schedule that decays to total_steps depends on it
        schedules = {config.get("optimizer", {}).get("schedule", "poly") for config in (old, new)}
        return schedules == {"step"}
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS)


def trajectory_changes(old: dict, new: dict) -> dict[str, tuple]:
    """The `changed_keys` that alter the training trajectory."""
    return {
        key: values
        for key, values in changed_keys(old, new).items()
        if not _is_harmless(key, old, new)
    }


def describe(changes: dict[str, tuple]) -> str:
    return ", ".join(
        f"{key} {json.dumps(old)} → {json.dumps(new)}" for key, (old, new) in changes.items()
    )


def read_run_config(workdir: str) -> dict | None:
    """The run's recorded config (None when there is none or it does not parse)."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            recorded = json.load(file)
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def check_resume(workdir: str, new: dict, *, resuming: bool, allow: bool) -> dict[str, tuple]:
    """The trajectory-changing keys of `new` (the config as JSON) against the run's config.json;
    {} when not `resuming` (no checkpoint) or nothing such changed. Raises ConfigChanged unless
    `allow`; with `allow`, logs them (the caller records them: `with_history`)."""
    old = read_run_config(workdir) if resuming else None
    if old is None:
        return {}
    changes = trajectory_changes(old, new)
    if changes and not allow:
        raise ConfigChanged(
            f"the config differs from the one that trained the checkpoints in {workdir} "
            f"(its {CONFIG_FILE}) in keys that change the training: {describe(changes)}. Rerun "
            "with the same config, use a new --workdir, or pass --allow_config_change to "
            f"continue with the change (recorded in {CONFIG_FILE})."
        )
    if changes:
        log.warning("resuming %s with a changed config: %s", workdir, describe(changes))
    return changes


def with_history(workdir: str, new: dict, changes: dict[str, tuple], step: int) -> dict:
    """`new` plus the run's config history, and an entry for `changes` at `step` if any."""
    old = (read_run_config(workdir) or {}) if step > 0 else {}  # a fresh run starts anew
    history = list(old.get(HISTORY_KEY, []))
    if changes:
        history.append(
            {
                "step": int(step),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "changed": {key: list(values) for key, values in changes.items()},
            }
        )
    return {**new, HISTORY_KEY: history} if history else dict(new)
