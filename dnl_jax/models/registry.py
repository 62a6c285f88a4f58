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
- `loss_ratios_fn(outputs, batch)` → `{name: (numerator, denominator)}` float32 scalars, summed
  over micro-batches, devices and hosts by the train step before dividing; the loss is
  Σ loss_weights[name] · Σnumerator/Σdenominator (one definition whatever the split,
  losses.py). `loss_selection_fn(outputs, batch)` (or None) → arrays that select what the loss
  counts (OHEM's kept pixels), which the step may compute first and add to the batch.
  `loss_fn(outputs, batch)` → (scalar loss, dict of scalar metrics) of one batch on its own;
  `metrics_fn(outputs, batch)` → dict of int32 counts to sum over batches, devices and hosts:
  `{'confusion': [K, K]}` (rows ground truth, columns prediction) or `{'correct', 'count'}`;
  `finalize_metrics(sums)` → the val metrics (mIoU, accuracies; see models/metrics.py), of which
  `best_metric` ranks checkpoints; `pad_label` labels the padding of fixed-size evaluation
  batches so that `metrics_fn` does not count it.
- Detection (`MaskRCNN`, models/detection/task.py): batches `{'image', 'image_size', 'image_id',
  'gt_boxes', 'gt_labels', 'gt_masks', 'gt_valid'}` (padded; mask_rcnn.py); the bundle's
  `train_forward` runs the detector's `loss_ratios` on the whole batch (its outputs are the
  ratios), `init_fn` initialises through `MaskRCNN.build`, and calling the module predicts
  detections, which the COCO evaluator (evaluators/coco.py) scores; `best_metric` 'bbox_AP'.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax import IGNORE_LABEL
from dnl_jax.models import losses, metrics, segmentor, video
from dnl_jax.models.bundle import ModelBundle
from dnl_jax.models.detection import task as detection

SEGMENTATION_OVERRIDES = (
    "depth", "base_channels", "stem_channels", "channels", "aux_channels", "output_stride", "aux",
    "dtype", "axis_name", "ignore_label", "aux_weight", "ohem", "class_weights", "dropout_rate",
    "implementation", "frozen_bn", "head", "pairwise", "unary", "loss_normalizer",
    "align_corners",
)
CLASSIFICATION_OVERRIDES = (
    "depth", "base_channels", "stem_channels", "inflation", "context", "temporal_pool",
    "dropout_rate", "dtype", "axis_name", "implementation", "frozen_bn", "temperature",
    "layout", "nl_mode", "use_scale",  # parity (#17): mmaction2 checkpoints, video.VIDEO_LAYOUTS
)

_SEG_DEFAULTS = dict(
    base_channels=64, stem_channels=64, output_stride=8, aux=True, dtype=None, axis_name=None,
    ignore_label=IGNORE_LABEL, aux_weight=0.4, ohem=None, class_weights=None,
    dropout_rate=0.1, implementation=None, frozen_bn=False, pairwise=True, unary=True,
    # 'kept' (the official code, and this codebase before the option existed) or 'all' (mmseg's
    # avg_non_ignore=False): see losses.py. align_corners: mmseg's heads' resize setting.
    loss_normalizer="kept", align_corners=False,
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


_TINY_DETECTOR = dict(
    depth=18, stem_channels=16, base_channels=16, frozen_bn=False, fpn_channels=32,
    fc_channels=64, conv_channels=32, rpn_train=(200, 100), rpn_test=(200, 100),
    rpn_sampler=(64, 0.5), rcnn_sampler=(32, 0.25), max_detections=10, roi_grid_limit=2)

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
    # Mask R-CNN R50-FPN (mmdet 3.x mask-rcnn_r50_fpn_1x_coco) and the context blocks of the
    # official DNL detection code (models/detection/task.py).
    "mask_rcnn_r50_fpn": detection.detection_config(None),
    "mask_rcnn_r50_fpn_nl_c4": detection.detection_config("nl"),
    "mask_rcnn_r50_fpn_gc_c4": detection.detection_config("gc"),
    "mask_rcnn_r50_fpn_dnl_c4": detection.detection_config("dnl_official"),
    "mask_rcnn_r50_fpn_dnl_c4c5": detection.detection_config("dnl_official", "c4+c5_all"),
    # The synthetic detection scenes' scale (CPU): ResNet-18 of 16 base channels trained from
    # scratch (batch norm in training mode), 32/64-wide heads, few proposals and samples.
    **{f"mask_rcnn_{name}_tiny": detection.detection_config(context, **_TINY_DETECTOR)
       for name, context in (("fcn", None), ("dnl", "dnl_official"), ("nl", "nl"),
                             ("gc", "gc"))},
}
MODEL_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))
DETECTION_OVERRIDES = detection.DETECTION_OVERRIDES


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
    valid = {"segmentation": SEGMENTATION_OVERRIDES, "classification": CLASSIFICATION_OVERRIDES,
             "detection": detection.DETECTION_OVERRIDES}[task]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for {task} model {name!r}; valid: {sorted(valid)}."
        )
    config.update(overrides)
    if task == "segmentation":
        return _segmentation_bundle(name, num_classes, config)
    if task == "detection":
        return ModelBundle(name=name, **detection.bundle_fields(num_classes, config))
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
    if not isinstance(config["align_corners"], bool):
        raise ValueError(f"align_corners must be True or False; got {config['align_corners']!r}.")
    normalizer = losses.check_normalizer(config["loss_normalizer"])
    class_weights = losses.check_class_weights(config["class_weights"], num_classes)
    module = segmentor.build_segmentor(
        config["depth"], config["head"], num_classes, output_stride=config["output_stride"],
        aux=config["aux"], base_channels=config["base_channels"],
        stem_channels=config["stem_channels"], channels=config["channels"],
        aux_channels=config["aux_channels"], dropout_rate=config["dropout_rate"],
        axis_name=config["axis_name"], frozen_bn=config["frozen_bn"], dtype=config["dtype"],
        implementation=config["implementation"], align_corners=config["align_corners"],
        head_kwargs=head_kwargs,
    )
    ratios_fn = functools.partial(
        segmentor.segmentation_loss_ratios, ignore_label=config["ignore_label"], ohem=ohem,
        class_weights=class_weights, normalizer=normalizer)
    weights = {"decode_loss": 1.0, "aux_loss": float(config["aux_weight"])}
    selection_fn = None
    if ohem is not None and normalizer == "kept":  # the normaliser depends on the logits
        selection_fn = functools.partial(segmentor.ohem_selection, ohem=ohem,
                                         ignore_label=config["ignore_label"])
    metrics_fn = functools.partial(
        segmentor.segmentation_confusion, num_classes=num_classes,
        ignore_label=config["ignore_label"])
    loss_fn = losses.batch_loss_fn(ratios_fn, weights)
    return ModelBundle(module, "segmentation", num_classes, loss_fn,
                       metrics_fn, name, "image",
                       dict(config, ohem=ohem, class_weights=class_weights),
                       loss_ratios_fn=ratios_fn, loss_weights=weights,
                       loss_selection_fn=selection_fn)


def classification_loss_ratios(outputs: Mapping, batch: Mapping) -> dict:
    """{'cross_entropy': (Σ CE, B), 'accuracy': (top-1 correct, B)} for `{'logits': [B, K]}`
    and `{'label': int [B]}`."""
    logits, labels = outputs["logits"], batch["label"]
    count = jnp.float32(labels.shape[0])
    correct = jnp.sum(jnp.argmax(logits, -1) == labels, dtype=jnp.float32)
    return {"cross_entropy": (-jnp.sum(losses.pixel_log_likelihood(logits, labels)), count),
            "accuracy": (correct, count)}


CLASSIFICATION_LOSS_WEIGHTS = {"cross_entropy": 1.0}
classification_loss = losses.batch_loss_fn(classification_loss_ratios, CLASSIFICATION_LOSS_WEIGHTS)


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
                       classification_metrics, name, "video", config,
                       loss_ratios_fn=classification_loss_ratios,
                       loss_weights=CLASSIFICATION_LOSS_WEIGHTS,
                       finalize_metrics=metrics.accuracy_from_counts, best_metric="accuracy",
                       metric_label="val top-1 accuracy (1 clip)", pad_label=-1,
                       example_unit="clip")


def parameter_mismatch(loaded, expected) -> Optional[str]:
    """None when the trees `loaded` and `expected` (arrays or shape structs) have the same
    parameter names and shapes, else a short description of the first difference, e.g.
    "['decode_head']['conv_seg']['kernel']: (1, 1, 16, 5) here, (1, 1, 16, 7) for the model"."""
    def shapes(tree):
        return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ()))
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    here, there = shapes(loaded), shapes(expected)
    missing, extra = sorted(set(there) - set(here)), sorted(set(here) - set(there))
    if missing:
        return f"{len(missing)} parameters missing, e.g. {missing[0]}"
    if extra:
        return f"{len(extra)} parameters the model does not have, e.g. {extra[0]}"
    for path in sorted(there):
        if here[path] != there[path]:
            return f"{path}: {here[path]} here, {there[path]} for the model"
    return None


__all__ = ["ModelBundle", "get_model", "init_variables", "parameter_mismatch", "MODEL_NAMES",
           "SEGMENTATION_OVERRIDES", "DETECTION_OVERRIDES",
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
