"""The tasks: one module each, the table of them, and the one way to build a model.

    built = tasks.build(config)                   # task, model bundle, host module, init
    bundle = tasks.get_model('dnl_r50-d8', num_classes=19)   # a registered model by name

`build` (tasks/build.py) is what the entry points (train, evaluate, analyze, the benchmarks)
call, once; they pass `built.task` and the bundle down. `for_dataset` / `for_model` (tasks/table.py)
are the lookups by name that `build` uses.

    name            module            datasets                                  evaluators
    'segmentation'  segmentation.py   synthetic, cityscapes, ade20k,            batched (synthetic),
                                      pascal_context                            segmentation
    'video'         video.py          kinetics, ucf101                          batched, multi_view
    'detection'     detection.py      synthetic_detection, coco                 coco

A task (`base.Task`) owns its datasets, its checks of `config.data`, its sources and training
transform, the shape of one input, its evaluation source, its model options and bundles, its
end-of-training figure and its analysis inputs. Adding a task is one new module with a `Task`
subclass and one line in `TASKS` (tasks/table.py; and its models' lines in models/registry.py).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from dnl_jax.models import registry
from dnl_jax.tasks.base import ModelBundle, Task
from dnl_jax.tasks.build import Built, build, bundle_of
from dnl_jax.tasks.table import DATASETS, TASKS, for_dataset, for_model

SYNTHETIC_DATASETS: tuple[str, ...] = tuple(
    name for task in TASKS.values() for name in task.synthetic
)
MODEL_NAMES = registry.MODEL_NAMES


def data_sections() -> dict[str, dict[str, Any]]:
    """Every task's `config.data` sections with their defaults: {section: {key: default}}."""
    sections: dict[str, dict[str, Any]] = {}
    for task in TASKS.values():
        sections.update(task.config_sections())
    return sections


def _normalised(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def check_unused_sections(data, task: Task) -> None:
    """ValueError for an override in a `config.data` section that the run does not read (e.g.
    config.data.detection.canvas on Cityscapes), naming the active `task` and what it reads."""
    read = task.sections_read(data)
    for section, defaults in data_sections().items():
        if section in read:
            continue
        for key, default in defaults.items():
            value = data[section][key]
            if _normalised(value) != _normalised(default):
                raise ValueError(
                    f"config.data.{section}.{key}={value!r} is not read by this run: "
                    f"config.data.name={data.name!r} is a {task.name} dataset, which reads "
                    f"{' and '.join(f'config.data.{s}' for s in read)}; remove the override."
                )


def applicable(config: ml_collections.ConfigDict, task: Task) -> ml_collections.ConfigDict:
    """A copy of `config` without the `config.data` sections the run (of `task`) does not read
    (what the run's config.json records)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    read = task.sections_read(config.data)
    with copy.unlocked():
        for section in data_sections():
            if section not in read:
                del copy.data[section]
    return copy


def get_model(name: str, num_classes: int, **overrides) -> ModelBundle:
    """The registered model `name` for `num_classes` classes, with `overrides` of its settings.

    Raises ValueError for an unknown name (listing `MODEL_NAMES`), an unknown override (listing
    the valid ones: the keys of the task's `model_defaults`) or an invalid value.
    """
    return bundle_of(for_model(name), name, num_classes, overrides)


def summary(name: str, input_shape, num_classes: int = 19, *, print_fn=print, **overrides) -> dict:
    """`models.summary.module_summary` of the registered model `name` (parameters and FLOPs)."""
    from dnl_jax.models.summary import module_summary

    return module_summary(
        get_model(name, num_classes, **overrides).module,
        input_shape,
        name=name,
        num_classes=num_classes,
        print_fn=print_fn,
    )


__all__ = [
    "TASKS",
    "DATASETS",
    "SYNTHETIC_DATASETS",
    "MODEL_NAMES",
    "Task",
    "ModelBundle",
    "for_dataset",
    "for_model",
    "get_model",
    "build",
    "Built",
    "summary",
    "data_sections",
    "check_unused_sections",
    "applicable",
]
