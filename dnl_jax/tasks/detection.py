"""The detection task for the model registry: Mask R-CNN settings by name, their overrides, and
the `ModelBundle` pieces the trainer needs (training forward = the loss ratios, initialisation
through `MaskRCNN.build`, COCO AP as the ranking metric).

Context blocks are named by `context` ('dnl_official' = the official DNL detection block, 'dnl'
= mmseg's DNL block, 'nl', 'gc', or None) and `context_stages`:

    'c4'          the second-to-last block of stage 4 (res4), `stage_with_nlgcb=[[],[],[-2],[]]`
    'c4+c5_all'   that block and every block of stage 5

always after the residual add, before the final ReLU (the official DNL detection code), with
inner channels C/4 ('dnl', 'dnl_official', 'nl') or GC ratio 1/4 ('gc').
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax

from dnl_jax.models import losses as model_losses
from dnl_jax.models.detection import losses, targets
from dnl_jax.models.detection.mask_rcnn import MaskRCNN
from dnl_jax.models.residual import ARCH_SETTINGS, ContextSpec

CONTEXTS = (None, "dnl_official", "dnl", "nl", "gc")
CONTEXT_STAGES = ("c4", "c4+c5_all")
# MaskRCNN attributes a config may set (besides num_classes), and the context switches.
MODULE_OVERRIDES = (
    "depth", "stem_channels", "base_channels", "frozen_bn", "fpn_channels", "fc_channels",
    "conv_channels", "box_head", "head_norm", "neck_norm", "mask_norm", "rpn_train", "rpn_test",
    "rpn_nms_iou", "rpn_sampler", "rcnn_sampler", "roi_grid_limit", "score_threshold", "nms_iou",
    "max_detections", "axis_name", "dtype",
)
DETECTION_OVERRIDES = MODULE_OVERRIDES + ("context", "context_stages", "temperature",
                                          "implementation")
BEST_METRIC = "bbox_AP"


def detection_config(context: Optional[str], context_stages: str = "c4", **extra) -> dict:
    """A registry entry: mmdet 3.x's `mask-rcnn_r50_fpn_1x_coco` settings with `extra` over
    them."""
    defaults = {field.name: field.default for field in dataclasses.fields(MaskRCNN)
                if field.name in MODULE_OVERRIDES}
    return {"task": "detection", **defaults, "context": context,
            "context_stages": context_stages, "temperature": 0.05, "implementation": None,
            **extra}


def _sampler(value, key: str) -> targets.SamplerConfig:
    if isinstance(value, targets.SamplerConfig):
        return value
    try:
        num, fraction = value
        sampler = targets.SamplerConfig(int(num), float(fraction))
    except (TypeError, ValueError):
        sampler = None
    if sampler is None or sampler.num < 1 or not 0 < sampler.pos_fraction <= 1:
        raise ValueError(f"{key}={value!r} must be (number of samples >= 1, positive fraction "
                         "in (0, 1]), e.g. (512, 0.25).")
    return sampler


def context_block_indices(stages: str, depth: int) -> tuple[tuple[int, ...], ...]:
    """Per-stage block indices of `stages` ('c4' or 'c4+c5_all') in a ResNet of `depth`."""
    if stages not in CONTEXT_STAGES:
        raise ValueError(f"context_stages={stages!r}; choose one of {CONTEXT_STAGES}.")
    if depth not in ARCH_SETTINGS:
        raise ValueError(f"depth={depth!r}; choose one of {sorted(ARCH_SETTINGS)}.")
    last = tuple(range(ARCH_SETTINGS[depth][3])) if stages == "c4+c5_all" else ()
    return ((), (), (-2,), last)


def build_module(num_classes: int, config: Mapping[str, Any]) -> MaskRCNN:
    """The `MaskRCNN` of a resolved registry config (defaults + overrides)."""
    context = config["context"]
    if context not in CONTEXTS:
        raise ValueError(f"context={context!r}; choose one of {CONTEXTS}.")
    kwargs = {key: config[key] for key in MODULE_OVERRIDES}
    kwargs["rpn_sampler"] = _sampler(config["rpn_sampler"], "rpn_sampler")
    kwargs["rcnn_sampler"] = _sampler(config["rcnn_sampler"], "rcnn_sampler")
    for key in ("rpn_train", "rpn_test"):
        kwargs[key] = tuple(int(v) for v in config[key])
    spec, indices = None, None
    if context is not None:
        spec = ContextSpec(context, "after_add", reduction=4, temperature=config["temperature"],
                           implementation=config["implementation"])
        indices = context_block_indices(config["context_stages"], config["depth"])
    return MaskRCNN(num_classes=num_classes, context=spec, context_block_indices=indices,
                    **kwargs)


def loss_ratios_are_outputs(outputs: Mapping, batch: Mapping) -> Mapping:
    """The detector's training forward already returns {name: (numerator, denominator)}."""
    del batch
    return outputs


def train_forward(module: MaskRCNN):
    """`(variables, batch, rngs) -> (loss ratios, mutated variables)`: `MaskRCNN.loss_ratios`
    on the whole batch (images and padded ground truth). RoI / anchor sampling draws from
    rngs['sampler'] folded with each image's id, so it does not depend on the device split."""
    def forward(variables, batch, rngs):
        return module.apply(variables, batch, train=True, method=MaskRCNN.loss_ratios,
                            rngs={"sampler": rngs["sampler"]}, mutable=["batch_stats"])
    return forward


def init_fn(module: MaskRCNN):
    """`(rngs, images) -> variables` through `MaskRCNN.build` (every layer, no proposals)."""
    def init(rngs, images: jax.Array):
        return module.init(rngs, images, method=MaskRCNN.build)
    return init


def finalize_metrics(metrics: Mapping) -> dict:
    """The COCO evaluator returns final metrics already."""
    return dict(metrics)


def bundle_fields(num_classes: int, config: Mapping[str, Any]) -> dict:
    """The `ModelBundle` keyword arguments of a detection model (registry.get_model)."""
    module = build_module(num_classes, config)

    def no_batched_metrics(outputs, batch):
        raise ValueError("detection models are evaluated with config.evals.<name>.type='coco' "
                         "(COCO box / mask AP), not with per-batch metric sums.")

    loss_fn = model_losses.batch_loss_fn(loss_ratios_are_outputs, losses.LOSS_WEIGHTS)
    return dict(module=module, task="detection", num_classes=num_classes, loss_fn=loss_fn,
                metrics_fn=no_batched_metrics, input_key="image", config=dict(config),
                loss_ratios_fn=loss_ratios_are_outputs, loss_weights=losses.LOSS_WEIGHTS,
                finalize_metrics=finalize_metrics, best_metric=BEST_METRIC,
                metric_label="val box AP", pad_label=-1, example_unit="image",
                train_forward=train_forward(module), init_fn=init_fn(module))


__all__ = ["CONTEXTS", "CONTEXT_STAGES", "DETECTION_OVERRIDES", "detection_config",
           "context_block_indices", "build_module", "bundle_fields"]
