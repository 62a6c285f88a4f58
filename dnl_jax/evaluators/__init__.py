"""Evaluators, one module per protocol (big_vision style): each is built from one
`config.evals.<name> = dict(type=..., every_steps=..., ...)` section, checks its own keys, and
`run(state)` returns named metrics. The trainer loops over them and writes each one's metrics
under its name; the evaluate command runs them on a checkpoint.

    type            module                        for
    'batched'       batched.py                    synthetic scenes, one clip per video
    'segmentation'  segmentation.py               prepared segmentation datasets, per image
                                                  (whole / slide / multi-scale + flip)
    'multi_view'    video.py                      videos, num_clips x num_crops views
    'coco'          coco.py                       detection: COCO box / mask AP (pycocotools)

Which types apply to a dataset is its task's `eval_types` (dnl_jax/tasks/). The evaluator named
'val' ranks checkpoints by the bundle's `best_metric`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax

from dnl_jax import tasks
from dnl_jax.evaluators.batched import BatchedEvaluator
from dnl_jax.evaluators.coco import CocoEvaluator
from dnl_jax.evaluators.common import (
    EvalContext,
    Evaluator,
    NonFiniteOutputs,
    make_predict_fn,
    settings_with_defaults,
)
from dnl_jax.evaluators.segmentation import SegmentationEvaluator
from dnl_jax.evaluators.video import MultiViewEvaluator

TYPES: dict[str, type[Evaluator]] = {
    "batched": BatchedEvaluator,
    "segmentation": SegmentationEvaluator,
    "multi_view": MultiViewEvaluator,
    "coco": CocoEvaluator,
}
RANKING_EVAL = "val"  # the evaluator whose `best_metric` ranks checkpoints


def _settings(name: str, section: Mapping, config, **hardware) -> tuple[type[Evaluator], dict]:
    if not hasattr(section, "get") or section.get("type") not in TYPES:
        found = section.get("type") if hasattr(section, "get") else section
        raise ValueError(f"config.evals.{name}.type={found!r}; choose one of {sorted(TYPES)}.")
    task = tasks.for_dataset(config.data.name)
    applies = task.eval_types(config.data)
    if section["type"] not in applies:
        raise ValueError(
            f"config.evals.{name}.type={section['type']!r} does not apply to the "
            f"{task.name} dataset {config.data.name!r}; use "
            f"{' or '.join(f'type={t!r}' for t in applies)}."
        )
    cls = TYPES[section["type"]]
    settings = settings_with_defaults(name, section, cls.KEYS, section["type"])
    cls.check(name, settings, config, **hardware)
    return cls, settings


def check_config(config, *, num_devices: int, num_processes: int) -> None:
    """Raises ValueError for a bad `config.evals` (no 'val' evaluator, unknown type or key, bad
    value, a batch that does not split over `num_devices`), naming the key and the fix."""
    evals = config.evals
    if RANKING_EVAL not in evals:
        raise ValueError(
            f"config.evals has no {RANKING_EVAL!r} evaluator (it ranks the "
            "checkpoints); add config.evals.val = dict(type=..., every_steps=...)."
        )
    for name, section in evals.items():
        _settings(name, section, config, num_devices=num_devices, num_processes=num_processes)


def from_config(config, context: EvalContext) -> list[Evaluator]:
    """The evaluators of `config.evals` (in name order, as ConfigDict keeps its keys), each
    built on `context`."""
    built = []
    for name, section in config.evals.items():
        cls, settings = _settings(
            name, section, config, num_devices=jax.device_count(), num_processes=jax.process_count()
        )
        built.append(cls(name, context, settings))
    return built


__all__ = [
    "TYPES",
    "RANKING_EVAL",
    "EvalContext",
    "Evaluator",
    "NonFiniteOutputs",
    "make_predict_fn",
    "check_config",
    "from_config",
]
