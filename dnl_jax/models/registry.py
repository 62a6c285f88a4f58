"""Named models for configs: `get_model(name, num_classes, **overrides)` → `ModelBundle` (module +
task + loss + metrics, scenic-style), and `summary(name, input_shape)` (parameters and FLOPs).

Bundle contract (what the trainer codes against):

- `module.apply(variables, inputs, train=..., rngs={'dropout': key} (train),
  mutable=['batch_stats'] (train))` → dict: segmentation `{'logits': [B, H, W, K]}` (+
  `'aux_logits'` in training with the auxiliary head), classification `{'logits': [B, K]}`;
  variables `{'params', 'batch_stats'}`.
- Batches: segmentation `{'image': float32 [B, H, W, 3], 'label': int32 [B, H, W]}` (255 =
  ignore); video `{'video': float32 [B, T, H, W, 3], 'label': int32 [B]}`. `bundle.input_key` says
  which key holds the inputs.
- `loss_fn(outputs, batch)` → (scalar loss, dict of scalar metrics);
  `metrics_fn(outputs, batch)` → dict of int32 counts to sum over batches, devices and hosts:
  `{'confusion': [K, K]}` (rows ground truth, columns prediction) or `{'correct', 'count'}`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.models import losses, segmentor, video

SEGMENTATION_OVERRIDES = (
    "depth", "base_channels", "stem_channels", "channels", "aux_channels", "output_stride", "aux",
    "dtype", "axis_name", "ignore_label", "aux_weight", "ohem", "class_weights", "dropout_rate",
    "implementation", "frozen_bn", "head", "pairwise", "unary",
)
CLASSIFICATION_OVERRIDES = (
    "depth", "base_channels", "stem_channels", "inflation", "context", "temporal_pool",
    "dropout_rate", "dtype", "axis_name", "implementation", "frozen_bn", "temperature",
    "layout", "nl_mode", "use_scale",  # parity (#17): mmaction2 checkpoints, video.VIDEO_LAYOUTS
)

_SEG_DEFAULTS = dict(
    base_channels=64, stem_channels=64, output_stride=8, aux=True, dtype=None, axis_name=None,
    ignore_label=losses.IGNORE_LABEL, aux_weight=0.4, ohem=None, class_weights=None,
    dropout_rate=0.1, implementation=None, frozen_bn=False, pairwise=True, unary=True,
)
_R50_WIDTHS = dict(channels=512, aux_channels=256)  # mmseg heads on 2048/1024-channel stages
_R18_WIDTHS = dict(channels=128, aux_channels=64)  # mmseg heads on 512/256-channel stages
# The CPU demo's scale; the `*_tiny` family differs only in the decode head (ablations).
_TINY = dict(base_channels=8, stem_channels=8, channels=16, aux_channels=8)


def _seg(head: str, depth: int, **extra) -> dict:
    widths = _R18_WIDTHS if depth < 50 else _R50_WIDTHS
    return {"task": "segmentation", "head": head, **_SEG_DEFAULTS, **widths, "depth": depth,
            **extra}


def _vid(context: Optional[str], inflation: str, depth: int = 50, **extra) -> dict:
    defaults = dict(task="classification", depth=depth, base_channels=64, stem_channels=64,
                    inflation=inflation, context=context, temporal_pool=True, dropout_rate=0.5,
                    dtype=None, axis_name=None, implementation=None, frozen_bn=False,
                    temperature=0.05, layout="paper", nl_mode="embedded_gaussian", use_scale=None)
    return {**defaults, **extra}


_REGISTRY: dict[str, dict] = {
    "dnl_tiny": _seg("dnl", 18, **_TINY),
    "dnl_pairwise_tiny": _seg("dnl", 18, **_TINY, unary=False),
    "dnl_unary_tiny": _seg("dnl", 18, **_TINY, pairwise=False),
    "nl_tiny": _seg("nl", 18, **_TINY),
    "gc_tiny": _seg("gc", 18, **_TINY),
    "fcn_tiny": _seg("fcn", 18, **_TINY),
    "dnl_r18-d8": _seg("dnl", 18),
    "dnl_r50-d8": _seg("dnl", 50),
    "dnl_r101-d8": _seg("dnl", 101),
    "nl_r50-d8": _seg("nl", 50),
    "nl_r101-d8": _seg("nl", 101),
    "fcn_r50-d8": _seg("fcn", 50),
    "fcn_r101-d8": _seg("fcn", 101),
    "gc_r50-d8": _seg("gc", 50),
    "dnl_i3d_r50": _vid("dnl", "i3d"),
    "nl_i3d_r50": _vid("nl", "i3d"),
    "dnl_c2d_r50": _vid("dnl", "c2d"),
    "dnl_i3d_tiny": _vid("dnl", "i3d", depth=18, base_channels=4, stem_channels=8),
}
MODEL_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A Flax module with its task, loss and metrics (see the module docstring for the contract).

    Attributes:
      module: the flax.linen Module (`Segmentor` or `VideoClassifier`).
      task: 'segmentation' or 'classification'.
      num_classes: K.
      loss_fn: `(outputs, batch) -> (scalar loss, {name: scalar})`.
      metrics_fn: `(outputs, batch) -> {name: int32 array}`, summable over batches/devices/hosts.
      name: the registry name.
      input_key: the batch key holding the inputs ('image' or 'video').
      config: the resolved settings (defaults + overrides), for logging.
    """

    module: nn.Module
    task: str
    num_classes: int
    loss_fn: Callable[[Mapping, Mapping], tuple[jax.Array, dict]]
    metrics_fn: Callable[[Mapping, Mapping], dict]
    name: str = ""
    input_key: str = "image"
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)


def get_model(name: str, num_classes: int, **overrides) -> ModelBundle:
    """The registered model `name` for `num_classes` classes, with `overrides` of its defaults.

    Raises ValueError for an unknown name (listing `MODEL_NAMES`), an unknown override (listing
    the valid ones) or an invalid value.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    config = dict(_REGISTRY[name])
    task = config.pop("task")
    valid = SEGMENTATION_OVERRIDES if task == "segmentation" else CLASSIFICATION_OVERRIDES
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for {task} model {name!r}; valid: {sorted(valid)}."
        )
    config.update(overrides)
    if task == "segmentation":
        return _segmentation_bundle(name, num_classes, config)
    return _classification_bundle(name, num_classes, config)


def _dnl_head_kwargs(config: dict) -> dict:
    """The DNL head's term switches (`pairwise`, `unary`), checked against the head."""
    terms = {key: config[key] for key in ("pairwise", "unary")}
    for key, value in terms.items():
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False; got {value!r}.")
    if config["head"] != "dnl":
        if not all(terms.values()):
            raise ValueError(
                f"pairwise/unary switch the terms of the 'dnl' head only; got {terms} with head="
                f"{config['head']!r}. Use head='dnl' or leave both True."
            )
        return {}
    if not any(terms.values()):
        raise ValueError("pairwise and unary are both False: the DNL block would compute nothing;"
                         " use head='fcn' for no context block.")
    return terms


def _segmentation_bundle(name: str, num_classes: int, config: dict) -> ModelBundle:
    head_kwargs = _dnl_head_kwargs(config)
    ohem = losses.check_ohem(config["ohem"])
    if not isinstance(config["aux_weight"], (int, float)) or config["aux_weight"] < 0:
        raise ValueError(f"aux_weight must be a number >= 0; got {config['aux_weight']!r}.")
    class_weights = losses.check_class_weights(config["class_weights"], num_classes)
    module = segmentor.build_segmentor(
        config["depth"], config["head"], num_classes, output_stride=config["output_stride"],
        aux=config["aux"], base_channels=config["base_channels"],
        stem_channels=config["stem_channels"], channels=config["channels"],
        aux_channels=config["aux_channels"], dropout_rate=config["dropout_rate"],
        axis_name=config["axis_name"], frozen_bn=config["frozen_bn"], dtype=config["dtype"],
        implementation=config["implementation"], head_kwargs=head_kwargs,
    )
    loss_fn = functools.partial(
        segmentor.segmentation_loss, ignore_label=config["ignore_label"],
        aux_weight=float(config["aux_weight"]), ohem=ohem, class_weights=class_weights,
    )
    metrics_fn = functools.partial(
        segmentor.segmentation_metrics, num_classes=num_classes, ignore_label=config["ignore_label"]
    )
    return ModelBundle(module, "segmentation", num_classes, loss_fn, metrics_fn, name, "image",
                       dict(config, ohem=ohem, class_weights=class_weights))


def classification_loss(outputs: Mapping, batch: Mapping) -> tuple[jax.Array, dict]:
    """(mean CE, {'loss', 'accuracy'}) for `{'logits': [B, K]}` and `{'label': int [B]}`."""
    loss = losses.classification_cross_entropy(outputs["logits"], batch["label"])
    accuracy = jnp.mean(jnp.argmax(outputs["logits"], -1) == batch["label"]).astype(jnp.float32)
    return loss, {"loss": loss, "accuracy": accuracy}


def classification_metrics(outputs: Mapping, batch: Mapping) -> dict:
    """`{'correct': int32, 'count': int32}` (top-1)."""
    return losses.classification_counts(outputs["logits"], batch["label"])


def _classification_bundle(name: str, num_classes: int, config: dict) -> ModelBundle:
    module = video.build_video_classifier(
        config["depth"], config["context"], num_classes, inflation=config["inflation"],
        base_channels=config["base_channels"], stem_channels=config["stem_channels"],
        dropout_rate=config["dropout_rate"], temporal_pool=config["temporal_pool"],
        axis_name=config["axis_name"], frozen_bn=config["frozen_bn"], dtype=config["dtype"],
        implementation=config["implementation"], temperature=config["temperature"],
        layout=config["layout"], nl_mode=config["nl_mode"], use_scale=config["use_scale"],
    )
    return ModelBundle(module, "classification", num_classes, classification_loss,
                       classification_metrics, name, "video", config)


__all__ = ["ModelBundle", "get_model", "init_variables", "MODEL_NAMES", "SEGMENTATION_OVERRIDES",
           "CLASSIFICATION_OVERRIDES", "classification_loss", "classification_metrics"]


def init_variables(module: nn.Module, rng: jax.Array, inputs: jax.Array) -> dict:
    """`module.init(rng, inputs, train=False)` under jit → `{'params', 'batch_stats'}`.

    On CPU the init program is compiled with XLA's backend optimisation off: the random
    initialisers unroll into large programs that take LLVM tens of seconds to optimise for a
    one-off run (20 s → 2 s for the tiny model); other backends compile it as usual.
    """
    lowered = jax.jit(lambda key, x: module.init(key, x, train=False)).lower(rng, inputs)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng, inputs)
