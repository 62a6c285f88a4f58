"""`ModelBundle`: a Flax module with its task, loss and metrics (scenic-style); the contract
the trainer codes against is in `dnl_jax/models/registry.py`'s docstring."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax

from dnl_jax import IGNORE_LABEL
from dnl_jax.models import metrics


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A Flax module with its task, loss and metrics (the contract: `registry`'s docstring).

    Attributes:
      module: the flax.linen Module (`Segmentor`, `VideoClassifier` or `MaskRCNN`).
      task: 'segmentation', 'classification' or 'detection'.
      num_classes: K.
      loss_fn: `(outputs, batch) -> (scalar loss, {name: scalar})` of one batch on its own.
      metrics_fn: `(outputs, batch) -> {name: int32 array}`, summable over batches/devices/hosts.
      name: the registry name.
      input_key: the batch key holding the inputs ('image' or 'video').
      config: the resolved settings (defaults + overrides), for logging.
      loss_ratios_fn: `(outputs, batch) -> {name: (numerator, denominator)}`.
      loss_weights: `{name: weight}`, the loss = Σ weight · ratio over the names present.
      loss_selection_fn: `(outputs, batch) -> {key: array}` or None (see the module docstring).
      finalize_metrics: `summed metrics_fn counts -> {name: value}` (the val metrics).
      best_metric: the key of `finalize_metrics`' result that ranks checkpoints (higher is
        better), and `metric_label` its name on figures.
      pad_label: the label of evaluation-batch padding, which `metrics_fn` does not count.
      example_unit: what one input is ('image' or 'clip'), for throughput logs.
      train_forward: `(variables, batch, rngs) -> (outputs, mutated variables)` of training,
        `rngs` {'dropout', 'sampler'}; None: `module.apply(variables, batch[input_key],
        train=True, rngs={'dropout': ...}, mutable=['batch_stats'])`. (Detection: the module
        takes the whole batch, ground truth included, and returns its loss ratios.)
      init_fn: `(rngs, inputs) -> variables`; None: `module.init(rngs, inputs, train=True)`.
    """

    module: nn.Module
    task: str
    num_classes: int
    loss_fn: Callable[[Mapping, Mapping], tuple[jax.Array, dict]]
    metrics_fn: Callable[[Mapping, Mapping], dict]
    name: str = ""
    input_key: str = "image"
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    loss_ratios_fn: Optional[Callable[[Mapping, Mapping], dict]] = None
    loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    loss_selection_fn: Optional[Callable[[Mapping, Mapping], dict]] = None
    finalize_metrics: Callable[[Mapping], dict] = metrics.segmentation_metrics_from_sums
    best_metric: str = "miou"
    metric_label: str = "val mIoU"
    pad_label: int = IGNORE_LABEL
    example_unit: str = "image"
    train_forward: Optional[Callable[[Mapping, Mapping, Mapping], tuple[Any, Mapping]]] = None
    init_fn: Optional[Callable[[Mapping, jax.Array], Mapping]] = None


__all__ = ["ModelBundle"]
