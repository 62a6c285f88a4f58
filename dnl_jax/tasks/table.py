"""The table of tasks and the two lookups by name: `for_dataset(config.data.name)` and
`for_model(config.model.name)`. Only the entry points' `build` (tasks/build.py) and the tasks
package's own helpers call them; everything below an entry point receives the resolved `Task`.
"""

from __future__ import annotations

from dnl_jax.models import registry
from dnl_jax.tasks import detection, segmentation, video
from dnl_jax.tasks.base import Task

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        segmentation.TASK,
        video.TASK,
        detection.TASK,
    )
}
DATASETS: tuple[str, ...] = tuple(name for task in TASKS.values() for name in task.datasets)


def for_dataset(name: str) -> Task:
    """The task of the dataset `name` (its unit's `task`, data/datasets.py; ValueError listing
    the datasets)."""
    known = tuple(n for task in TASKS.values() for n in task.datasets)
    for task in TASKS.values():
        if name in task.datasets:
            return task
    raise ValueError(f"config.data.name={name!r}; choose one of {known}.")


def for_model(name: str) -> Task:
    """The task of the registered model `name` (ValueError listing `MODEL_NAMES`)."""
    return TASKS[registry.lookup(name)[0]]


def check_model_task(model_task: Task, data_task: Task, model_name: str, data_name: str) -> None:
    """ValueError when the model's task is not the dataset's (a segmentation model on videos, or
    the reverse), suggesting a model of the dataset's task."""
    if model_task is not data_task:
        raise ValueError(
            f"config.model.name={model_name!r} is a {model_task.name} model but "
            f"config.data.name={data_name!r} is a {data_task.name} dataset; choose "
            f"a {data_task.name} model, e.g. "
            f"--config.model.name={data_task.example_model}."
        )


__all__ = ["TASKS", "DATASETS", "for_dataset", "for_model", "check_model_task"]
