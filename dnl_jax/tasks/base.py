"""What every task provides (`Task`) and what its models are to the trainer (`ModelBundle`).

A task (segmentation, video, detection: one module each in this package) owns everything that
differs between them: its datasets, its `config.data.<task>` section and the checks of it, its
sources and training transform, the shape of one input, its evaluation source, its model
bundles (loss, metric finalisation, the console line), its end-of-training figure and its
analysis inputs. `dnl_jax.tasks.build(config)` resolves a config's task and model once, at the
entry point; the trainer, the evaluators and the commands code against `Task`, `ModelBundle`
and `EvalInputs` only.

Bundle contract (what the trainer codes against):

- `module.apply(variables, inputs, train=..., rngs={'dropout': key} (train),
  mutable=['batch_stats'] (train))` → dict: segmentation `{'logits': [B, H, W, K]}` (+
  `'aux_logits'` in training with the auxiliary head), video `{'logits': [B, K]}`;
  variables `{'params', 'batch_stats'}`.
- Batches: segmentation `{'image': float32 [B, H, W, 3], 'label': int32 [B, H, W]}` (255 =
  ignore); video `{'video': float32 [B, T, H, W, 3], 'label': int32 [B]}`. `bundle.input_key` says
  which key holds the inputs.
- `loss_ratios_fn(outputs, batch)` → `{name: (numerator, denominator)}` float32 scalars, summed
  over micro-batches, devices and hosts by the train step before dividing; the loss is
  Σ loss_weights[name] · Σnumerator/Σdenominator (one definition whatever the split,
  models/losses.py). `loss_selection_fn(outputs, batch)` (or None) → arrays that select what the
  loss counts (OHEM's kept pixels), which the step may compute first and add to the batch.
  `loss_fn(outputs, batch)` → (scalar loss, dict of scalar metrics) of one batch on its own;
  `metrics_fn(outputs, batch)` → dict of int32 counts to sum over batches, devices and hosts:
  `{'confusion': [K, K]}` (rows ground truth, columns prediction) or `{'correct', 'count'}`;
  `finalize_metrics(sums)` → the val metrics (mIoU, accuracies; see models/metrics.py), of which
  `best_metric` ranks checkpoints; `pad_label` labels the padding of fixed-size evaluation
  batches so that `metrics_fn` does not count it.
- Detection (`MaskRCNN`, tasks/detection.py): batches `{'image', 'image_size', 'image_id',
  'gt_boxes', 'gt_labels', 'gt_masks', 'gt_valid'}` (padded; mask_rcnn.py); the bundle's
  `train_forward` runs the detector's `loss_ratios` on the whole batch (its outputs are the
  ratios), `init_fn` initialises through `MaskRCNN.build`, and calling the module predicts
  detections, which the COCO evaluator (evaluators/coco.py) scores; `best_metric` 'bbox_AP'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax

from dnl_jax import IGNORE_LABEL
from dnl_jax.data import datasets as data_datasets
from dnl_jax.models import metrics


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A Flax module with its task, loss and metrics (the contract: this module's docstring).

    Attributes:
      module: the flax.linen Module (`Segmentor`, `VideoClassifier` or `MaskRCNN`).
      task: the `Task.name` ('segmentation', 'video' or 'detection').
      num_classes: K.
      loss_fn: `(outputs, batch) -> (scalar loss, {name: scalar})` of one batch on its own.
      metrics_fn: `(outputs, batch) -> {name: int32 array}`, summable over batches/devices/hosts.
      name: the registry name.
      input_key: the batch key holding the inputs ('image' or 'video').
      config: the resolved settings (defaults + overrides), for logging.
      loss_ratios_fn: `(outputs, batch) -> {name: (numerator, denominator)}`.
      loss_weights: `{name: weight}`, the loss = Σ weight · ratio over the names present.
      loss_selection_fn: `(outputs, batch) -> {key: array}` or None (see the module docstring).
      finalize_metrics: `summed metrics_fn counts -> {name: value}` (the val metrics), and
        `describe_metrics` their console line.
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
    loss_ratios_fn: Callable[[Mapping, Mapping], dict] | None = None
    loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    loss_selection_fn: Callable[[Mapping, Mapping], dict] | None = None
    finalize_metrics: Callable[[Mapping], dict] = metrics.segmentation_metrics_from_sums
    describe_metrics: Callable[[Mapping], str] = metrics.describe_segmentation
    best_metric: str = "miou"
    metric_label: str = "val mIoU"
    pad_label: int = IGNORE_LABEL
    example_unit: str = "image"
    train_forward: Callable[[Mapping, Mapping, Mapping], tuple[Any, Mapping]] | None = None
    init_fn: Callable[[Mapping, jax.Array], Mapping] | None = None


@dataclasses.dataclass(frozen=True)
class EvalInputs:
    """What a task hands its evaluators for one dataset (through `EvalContext`): the kind of its
    evaluation examples and the hooks that make them model inputs. An evaluator declares the
    kinds it accepts (`Evaluator.INPUTS`) and reads nothing else of the task or of `config.data`.

    Attributes:
      kind: 'scenes' (model-ready, one size: the drawn scenes), 'images' (prepared images of
        their own sizes, with label maps), 'videos' (decoded clips) or 'detection'.
      task: the task's name, and `dataset` the dataset's (`config.data.name`), for messages.
      num_classes: K.
      label_check: `batch -> batch` check of the class labels of evaluation batches, or None.
      num_examples: the val examples when known before the split is opened (drawn scenes), and
        `num_examples_key` the config key that sets it; None otherwise.
      base_size: (h, w) that 'images' are resized to (aspect kept) before inference, or None.
      write_prediction: `(prediction uint8 [H, W], name, output_dir) -> path` writing one
        prediction in the benchmark's submission ids and file name ('images'), or None.
      view_settings: `(num_clips, num_crops, short_side) -> transforms.video_eval_views kwargs`
        ('videos'), and `check_short_side(evaluator name, short_side)` its check; None otherwise.
    """

    kind: str
    task: str
    dataset: str
    num_classes: int
    label_check: Callable[[dict], dict] | None = None
    num_examples: int | None = None
    num_examples_key: str = ""
    base_size: tuple[int, int] | None = None
    write_prediction: Callable[[Any, str, str], str] | None = None
    view_settings: Callable[[int, int, int], dict] | None = None
    check_short_side: Callable[[str, int], None] | None = None

    @classmethod
    def of(cls, kind: str, task: str, data, **hooks) -> EvalInputs:
        """The `kind` inputs of `task` for a run on `data` (config.data: its name and
        num_classes), with the `hooks` (attributes above) that kind uses."""
        return cls(kind, task, data.name, int(data.num_classes), **hooks)


def require(ok: bool, message: str) -> None:
    """ValueError(`message`) unless `ok`: the tasks' checks of config values."""
    if not ok:
        raise ValueError(message)


def pair_ok(value) -> bool:
    """Whether `value` is two integers >= 1 (a size such as (h, w))."""
    return len(tuple(value)) == 2 and all(int(v) >= 1 for v in value)


def drawn_image_shape(data) -> tuple[int, int, int]:
    """(s, s, 3), s = config.data.synthetic.image_size: the drawn scenes' model-ready images."""
    side = int(data.synthetic.image_size)
    return side, side, 3


class Task:
    """One task's knowledge (module docstring). Subclasses set the attributes and override the
    methods; every method that takes `data` reads `config.data` (its common keys and this task's
    own section)."""

    name: str = ""
    input_key: str = "image"  # the batch key of the model's inputs
    example_model: str = ""  # a model to suggest when the config's model is of another task
    # Every model option of the task with its default; the options a config may override are
    # exactly these keys (`model_settings`).
    model_defaults: Mapping[str, Any] = {}

    @property
    def datasets(self) -> tuple[str, ...]:
        """The `config.data.name` values of this task: the units of `data.datasets` whose task
        it is."""
        return data_datasets.of_task(self.name)

    @property
    def synthetic(self) -> tuple[str, ...]:
        """Of `datasets`, the scenes drawn in memory (nothing to prepare)."""
        return data_datasets.of_task(self.name, drawn=True)

    def config_sections(self) -> dict[str, dict]:
        """The `config.data` sections this task contributes: {section name: {key: default}}."""
        raise NotImplementedError

    def sections_read(self, data) -> tuple[str, ...]:
        """The `config.data` sections a run on `data.name` reads (all others must keep their
        defaults, and config.json leaves them out)."""
        raise NotImplementedError

    def eval_inputs(self, data) -> EvalInputs:
        """What the evaluators of a run on `data.name` get (`EvalInputs`); the evaluator types
        that apply are those whose `INPUTS` include its `kind`."""
        raise NotImplementedError

    def check_data(self, config) -> None:
        """Raises ValueError naming the key and the fix for a bad value of this task's keys."""
        raise NotImplementedError

    def sources(self, data) -> tuple[Any, Any]:
        """(train, val) random-access sources of `data.name`."""
        raise NotImplementedError

    def eval_source(self, data, split: str):
        """The random-access source of `split` for the evaluators."""
        raise NotImplementedError

    def example_shape(self, data) -> tuple[int, ...]:
        """The shape of one training input (without the batch axis)."""
        raise NotImplementedError

    def train_transform(self, data):
        """The training augmentation (a grain RandomMap), or None for model-ready examples."""
        raise NotImplementedError

    def model_settings(
        self, name: str, entry: Mapping[str, Any], overrides: Mapping[str, Any]
    ) -> dict:
        """`model_defaults`, then the registry `entry`, then `overrides` (ValueError for an
        override that is not an option of this task, listing the valid ones)."""
        unknown = sorted(set(overrides) - set(self.model_defaults))
        if unknown:
            raise ValueError(
                f"unknown override(s) {unknown} for {self.name} model {name!r}; "
                f"valid: {sorted(self.model_defaults)}."
            )
        return {**self.model_defaults, **entry, **overrides}

    def build_bundle(self, name: str, num_classes: int, settings: Mapping[str, Any]) -> ModelBundle:
        """The `ModelBundle` of the resolved `settings` (`model_settings`)."""
        raise NotImplementedError

    def save_figure(
        self,
        workdir: str,
        bundle: ModelBundle,
        module: nn.Module,
        variables: Mapping,
        source: Any,
        data,
    ) -> str | None:
        """The end-of-training figure's path, or None when the task or model has none."""
        del workdir, bundle, module, variables, source, data
        return None

    def label_check(self, data, what: str) -> Callable[[dict], dict] | None:
        """A `batch -> batch` check of the class labels of `what` (e.g. 'training clips in a
        batch'), or None: label maps have an ignore label and the loss counts labels outside
        [0, K) instead."""
        del data, what
        return None

    def analysis_examples(self, config, split: str, num_images: int) -> list[dict]:
        """Up to `num_images` examples of `split` as model inputs, for `dnl_jax.cli.analyze`."""
        del config, split, num_images
        raise ValueError(
            f"the attention analysis (python -m dnl_jax.cli.analyze) reads segmentation "
            f"and video models; {self.name} models are not analysed."
        )


class InputImplementation(Protocol):
    """One way a task's examples are made (e.g. tasks/segmentation_inputs.py): drawn in memory,
    or read through the dataset unit. Each method takes `config.data` (`data`) and the unit."""

    section: str  # the config.data section it reads

    def check(self, config) -> None: ...

    def sources(self, data, dataset: data_datasets.Dataset) -> tuple[Any, Any]: ...

    def eval_source(self, data, dataset: data_datasets.Dataset, split: str) -> Any: ...

    def example_shape(self, data) -> tuple[int, ...]: ...

    def train_transform(self, data) -> Any: ...


class InputsByDataset(Task):
    """A task with two input implementations, `drawn_inputs` for the datasets drawn in memory
    and `dataset_inputs` for the others, chosen by the dataset unit (`Dataset.drawn`); the
    `Task` methods about examples delegate to the one chosen."""

    drawn_inputs: InputImplementation
    dataset_inputs: InputImplementation

    def _inputs(self, data) -> tuple[Any, data_datasets.Dataset]:
        """The implementation for `data.name` and its dataset unit."""
        dataset = data_datasets.get(data.name)
        return (self.drawn_inputs if dataset.drawn else self.dataset_inputs), dataset

    def sections_read(self, data) -> tuple[str, ...]:
        return (self._inputs(data)[0].section,)

    def check_data(self, config) -> None:
        self._inputs(config.data)[0].check(config)

    def sources(self, data):
        implementation, dataset = self._inputs(data)
        return implementation.sources(data, dataset)

    def eval_source(self, data, split: str):
        implementation, dataset = self._inputs(data)
        return implementation.eval_source(data, dataset, split)

    def example_shape(self, data) -> tuple[int, ...]:
        return self._inputs(data)[0].example_shape(data)

    def train_transform(self, data):
        return self._inputs(data)[0].train_transform(data)


__all__ = [
    "EvalInputs",
    "InputImplementation",
    "InputsByDataset",
    "ModelBundle",
    "Task",
    "drawn_image_shape",
    "pair_ok",
    "require",
]
