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

An evaluator type applies to a dataset when its `INPUTS` include the kind of the task's
`EvalInputs` for it (dnl_jax/tasks/). Its defaults are its `KEYS`; `section(type, **values)` writes
a config section from them. Adding an evaluator is one module and one line in `TYPES`. The
evaluator named 'val' ranks checkpoints by the bundle's `best_metric`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax

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
from dnl_jax.tasks.base import EvalInputs

TYPES: dict[str, type[Evaluator]] = {
    "batched": BatchedEvaluator,
    "segmentation": SegmentationEvaluator,
    "multi_view": MultiViewEvaluator,
    "coco": CocoEvaluator,
}
RANKING_EVAL = "val"  # the evaluator whose `best_metric` ranks checkpoints


def section(evaluator_type: str, **values) -> dict:
    """`config.evals.<name>` of an evaluator of `evaluator_type`: its `KEYS` defaults with
    `values` over them (ValueError for an unknown type or key), e.g.
    `section('segmentation', every_steps=8000, mode='slide', crop_size=(769, 769))`."""
    if evaluator_type not in TYPES:
        raise ValueError(f"evaluator type {evaluator_type!r}; choose one of {sorted(TYPES)}.")
    keys = TYPES[evaluator_type].KEYS
    return {
        "type": evaluator_type,
        **settings_with_defaults("<name>", values, keys, evaluator_type),
    }


def applicable_types(inputs: EvalInputs) -> tuple[str, ...]:
    """The evaluator types whose `INPUTS` accept `inputs.kind`."""
    return tuple(name for name, cls in TYPES.items() if inputs.kind in cls.INPUTS)


def _settings(
    name: str, section: Mapping, inputs: EvalInputs, **hardware
) -> tuple[type[Evaluator], dict]:
    if not hasattr(section, "get") or section.get("type") not in TYPES:
        found = section.get("type") if hasattr(section, "get") else section
        raise ValueError(f"config.evals.{name}.type={found!r}; choose one of {sorted(TYPES)}.")
    cls = TYPES[section["type"]]
    if inputs.kind not in cls.INPUTS:
        raise ValueError(
            f"config.evals.{name}.type={section['type']!r} does not apply to the "
            f"{inputs.task} dataset {inputs.dataset!r}; use "
            f"{' or '.join(f'type={t!r}' for t in applicable_types(inputs))}."
        )
    settings = settings_with_defaults(name, section, cls.KEYS, section["type"])
    cls.check(name, settings, inputs, **hardware)
    return cls, settings


def check_config(evals, inputs: EvalInputs, *, num_devices: int, num_processes: int) -> None:
    """Raises ValueError for a bad `config.evals` (no 'val' evaluator, unknown type or key, bad
    value, a type that does not apply to `inputs`, a batch that does not split over
    `num_devices`), naming the key and the fix."""
    if RANKING_EVAL not in evals:
        raise ValueError(
            f"config.evals has no {RANKING_EVAL!r} evaluator (it ranks the "
            "checkpoints); add config.evals.val = dict(type=..., every_steps=...)."
        )
    for name, value in evals.items():
        _settings(name, value, inputs, num_devices=num_devices, num_processes=num_processes)


def from_config(evals, context: EvalContext) -> list[Evaluator]:
    """The evaluators of the sections `evals` (`config.evals`, in name order, as ConfigDict
    keeps its keys), each built on `context`."""
    built = []
    for name, value in evals.items():
        cls, settings = _settings(
            name,
            value,
            context.inputs,
            num_devices=jax.device_count(),
            num_processes=jax.process_count(),
        )
        built.append(cls(name, context, settings))
    return built


def describe(built: list[Evaluator], results: Mapping[str, Mapping]) -> str:
    """One console line of `results` ({evaluator name: metrics}) of the evaluators `built`,
    each described by its evaluator, the ranking evaluator first."""
    ordered = sorted((e for e in built if e.name in results), key=lambda e: e.name != RANKING_EVAL)
    return "; ".join(e.describe(results[e.name]) for e in ordered) or "no metrics"


__all__ = [
    "TYPES",
    "RANKING_EVAL",
    "EvalContext",
    "Evaluator",
    "NonFiniteOutputs",
    "make_predict_fn",
    "section",
    "applicable_types",
    "check_config",
    "from_config",
    "describe",
]
