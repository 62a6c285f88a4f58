"""The one way to build a model from a config: `build(config)` resolves the task of
`config.data.name` and builds the model of `config.model` for `config.data.num_classes` once, with
its compute dtype (`model.dtype`), its options (`model.kwargs`) and the check that the model's
task is the dataset's, all applied here. The trainer, `evaluate`, `analyze`, the benchmarks and
any new command call it at their entry point and pass the result down:

    built = build(config)                         # or build(config, axis_name='batch') for pmap
    built.task, built.bundle, built.module        # the Task, the ModelBundle, the host module
    variables = built.init_variables(rngs)        # {'params', 'batch_stats'} of two zero inputs

Nothing below an entry point looks the task or the model up by name again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dnl_jax.models import registry
from dnl_jax.tasks import table
from dnl_jax.tasks.base import ModelBundle, Task


@dataclasses.dataclass(frozen=True)
class Built:
    """What a config resolves to (module docstring).

    Attributes:
      task: the dataset's `Task` (which is also the model's: checked by `build`).
      bundle: the `ModelBundle`, its batch norm reducing over `axis_name` (pmap) if one was given.
      module: the same model without a pmap axis, for initialisation and inference on the host
        (`bundle.module` itself when there is no axis).
      example_shape: the shape of one training input, without the batch axis.
      options: the model options applied (`config.model.kwargs` + dtype, + axis_name).
    """

    task: Task
    bundle: ModelBundle
    module: nn.Module
    example_shape: tuple[int, ...]
    options: Mapping[str, Any]
    host_bundle: ModelBundle

    def init_variables(self, rngs: Mapping[str, jax.Array], batch: int = 2) -> dict:
        """{'params', 'batch_stats'?} of the host model for `rngs` ({'params', 'dropout'}),
        initialised in training mode on `batch` zero inputs (training-only parts such as the
        auxiliary head get parameters too; flax's batch norm leaves its statistics alone)."""
        inputs = jnp.zeros((batch, *self.example_shape))
        if self.host_bundle.init_fn is not None:
            return dict(self.host_bundle.init_fn(rngs, inputs))
        return dict(self.module.init(dict(rngs), inputs, train=True))


def model_options(config: ml_collections.ConfigDict, axis_name: str | None = None) -> dict:
    """The options `build` passes to the model: `config.model.kwargs`, the compute dtype of
    `config.model.dtype` ('bfloat16'; float32 is the models' default) and `axis_name`."""
    options = config.model.kwargs.to_dict()
    if config.model.dtype == "bfloat16":
        options["dtype"] = jnp.bfloat16
    if axis_name is not None:
        options["axis_name"] = axis_name
    return options


def bundle_of(task: Task, name: str, num_classes: int, options: Mapping[str, Any]) -> ModelBundle:
    """The registered model `name` of `task` for `num_classes` classes with `options` (ValueError
    for an unknown name, option or value; `dnl_jax.tasks.get_model` is this plus the lookup)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    _, entry = registry.lookup(name)
    return task.build_bundle(name, num_classes, task.model_settings(name, entry, options))


def build(config: ml_collections.ConfigDict, *, axis_name: str | None = None) -> Built:
    """The task and the model of `config` (module docstring). Raises ValueError for an unknown
    dataset or model, a bad model option, or a model of another task than the dataset's."""
    name, num_classes = config.model.name, config.data.num_classes
    task = table.for_dataset(config.data.name)
    table.check_model_task(table.for_model(name), task, name, config.data.name)
    options = model_options(config, axis_name)
    bundle = bundle_of(task, name, num_classes, options)
    host = (
        bundle if axis_name is None else bundle_of(task, name, num_classes, model_options(config))
    )
    return Built(
        task=task,
        bundle=bundle,
        module=host.module,
        example_shape=tuple(task.example_shape(config.data)),
        options=options,
        host_bundle=host,
    )


__all__ = ["Built", "build", "bundle_of", "model_options"]
