"""The detection task: the synthetic detection scenes and COCO 2017, Mask R-CNN with context
blocks in the backbone (its settings, overrides and `ModelBundle`: training forward = the loss
ratios, initialisation through `MaskRCNN.build`, COCO AP as the ranking metric), and the figure
of detections with the backbone block's attention.

Inputs: COCO images are resized keep-ratio to `base_size` (long, short), normalised and padded to
a fixed `canvas` (h, w) (static shapes), with at most `max_instances` ground-truth objects;
the synthetic scenes are drawn model-ready at `image_size`² (the two implementations, one chosen
per dataset: tasks/detection_inputs.py). Evaluation: 'coco' (box / mask AP).

Context blocks are named by `context` ('dnl_official' = the official DNL detection block, 'dnl'
= mmseg's DNL block, 'nl', 'gc', or None) and `context_stages`:

    'c4'          the second-to-last block of stage 4 (res4), `stage_with_nlgcb=[[],[],[-2],[]]`
    'c4+c5_all'   that block and every block of stage 5

always after the residual add, before the final ReLU (the official DNL detection code), with
inner channels C/4 ('dnl', 'dnl_official', 'nl') or GC ratio 1/4 ('gc').
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from dnl_jax.models import losses as model_losses
from dnl_jax.models.detection import losses, targets
from dnl_jax.models.detection.mask_rcnn import MaskRCNN
from dnl_jax.models.residual import ARCH_SETTINGS, ContextSpec
from dnl_jax.tasks import detection_inputs as inputs
from dnl_jax.tasks.base import EvalInputs, InputsByDataset, ModelBundle
from dnl_jax.tasks.detection_inputs import DetectionEvalSource

# config.data.detection, the prepared datasets (COCO): resize keep-ratio to base_size (long,
# short), e.g. mmdet's (1333, 800); pad to a fixed canvas (h, w), a multiple of 32 that holds
# every resized image (static shapes); at most max_instances ground-truth objects per image (the
# rest are counted and reported); filter_empty_gt: train on mmdet's training set (images with
# annotations, shorter side >= 32) instead of every image; mask_crop_size 0: gt masks at the
# canvas size (G × H × W bytes per image), S > 0: each mask resampled to S × S inside its box
# (data/detection_transforms.py:box_mask_crops), e.g. 56.
SECTION = dict(
    base_size=(1333, 800),
    canvas=(1344, 1344),
    max_instances=100,
    filter_empty_gt=True,
    mask_crop_size=0,
)

CONTEXTS = (None, "dnl_official", "dnl", "nl", "gc")
CONTEXT_STAGES = ("c4", "c4+c5_all")
# MaskRCNN attributes a config may set (besides num_classes), and the context switches.
MODULE_OVERRIDES = (
    "depth",
    "stem_channels",
    "base_channels",
    "frozen_bn",
    "fpn_channels",
    "fc_channels",
    "conv_channels",
    "box_head",
    "head_norm",
    "neck_norm",
    "mask_norm",
    "rpn_train",
    "rpn_test",
    "rpn_nms_iou",
    "rpn_sampler",
    "rcnn_sampler",
    "roi_grid_limit",
    "score_threshold",
    "nms_iou",
    "max_detections",
    "axis_name",
    "dtype",
)
# mmdet 3.x's `mask-rcnn_r50_fpn_1x_coco` settings (the module's field defaults), no context.
MODEL_DEFAULTS = {
    **{
        field.name: field.default
        for field in dataclasses.fields(MaskRCNN)
        if field.name in MODULE_OVERRIDES
    },
    "context": None,
    "context_stages": "c4",
    "temperature": 0.05,
    "implementation": None,
}
BEST_METRIC = "bbox_AP"


def _sampler(value, key: str) -> targets.SamplerConfig:
    if isinstance(value, targets.SamplerConfig):
        return value
    try:
        num, fraction = value
        sampler = targets.SamplerConfig(int(num), float(fraction))
    except (TypeError, ValueError):
        sampler = None
    if sampler is None or sampler.num < 1 or not 0 < sampler.pos_fraction <= 1:
        raise ValueError(
            f"{key}={value!r} must be (number of samples >= 1, positive fraction "
            "in (0, 1]), e.g. (512, 0.25)."
        )
    return sampler


def context_block_indices(stages: str, depth: int) -> tuple[tuple[int, ...], ...]:
    """Per-stage block indices of `stages` ('c4' or 'c4+c5_all') in a ResNet of `depth`."""
    if stages not in CONTEXT_STAGES:
        raise ValueError(f"context_stages={stages!r}; choose one of {CONTEXT_STAGES}.")
    if depth not in ARCH_SETTINGS:
        raise ValueError(f"depth={depth!r}; choose one of {sorted(ARCH_SETTINGS)}.")
    last = tuple(range(ARCH_SETTINGS[depth][3])) if stages == "c4+c5_all" else ()
    return ((), (), (-2,), last)


def build_module(num_classes: int, settings: Mapping[str, Any]) -> MaskRCNN:
    """The `MaskRCNN` of the resolved model settings (defaults, registry entry, overrides)."""
    context = settings["context"]
    if context not in CONTEXTS:
        raise ValueError(f"context={context!r}; choose one of {CONTEXTS}.")
    kwargs = {key: settings[key] for key in MODULE_OVERRIDES}
    kwargs["rpn_sampler"] = _sampler(settings["rpn_sampler"], "rpn_sampler")
    kwargs["rcnn_sampler"] = _sampler(settings["rcnn_sampler"], "rcnn_sampler")
    for key in ("rpn_train", "rpn_test"):
        kwargs[key] = tuple(int(v) for v in settings[key])
    spec, indices = None, None
    if context is not None:
        spec = ContextSpec(
            context,
            "after_add",
            reduction=4,
            temperature=settings["temperature"],
            implementation=settings["implementation"],
        )
        indices = context_block_indices(settings["context_stages"], settings["depth"])
    return MaskRCNN(num_classes=num_classes, context=spec, context_block_indices=indices, **kwargs)


def loss_ratios_are_outputs(outputs: Mapping, batch: Mapping) -> Mapping:
    """The detector's training forward already returns {name: (numerator, denominator)}."""
    del batch
    return outputs


def train_forward(module: MaskRCNN):
    """`(variables, batch, rngs) -> (loss ratios, mutated variables)`: `MaskRCNN.loss_ratios`
    on the whole batch (images and padded ground truth). RoI / anchor sampling draws from
    rngs['sampler'] folded with each image's id, so it does not depend on the device split."""

    def forward(variables, batch, rngs):
        return module.apply(
            variables,
            batch,
            train=True,
            method=MaskRCNN.loss_ratios,
            rngs={"sampler": rngs["sampler"]},
            mutable=["batch_stats"],
        )

    return forward


def init_fn(module: MaskRCNN):
    """`(rngs, images) -> variables` through `MaskRCNN.build` (every layer, no proposals)."""

    def init(rngs, images: jax.Array):
        return module.init(rngs, images, method=MaskRCNN.build)

    return init


def describe_metrics(metrics: Mapping) -> str:
    """The console line of the COCO evaluator's metrics (box AP, and mask AP when scored)."""
    parts = [f"val box AP {metrics['bbox_AP']:.4f} (AP50 {metrics['bbox_AP50']:.4f})"]
    if "segm_AP" in metrics:
        parts.append(f"mask AP {metrics['segm_AP']:.4f} (AP50 {metrics['segm_AP50']:.4f})")
    return "; ".join(parts)


def finalize_metrics(metrics: Mapping) -> dict:
    """The COCO evaluator returns final metrics already."""
    return dict(metrics)


def _no_batched_metrics(outputs, batch):
    raise ValueError(
        "detection models are evaluated with config.evals.<name>.type='coco' "
        "(COCO box / mask AP), not with per-batch metric sums."
    )


class Detection(InputsByDataset):
    """Instance detection and segmentation (module docstring)."""

    name = "detection"
    input_key = "image"
    example_model = "mask_rcnn_r50_fpn_dnl_c4"
    model_defaults = MODEL_DEFAULTS
    drawn_inputs, dataset_inputs = inputs.DRAWN, inputs.IMAGES

    def config_sections(self) -> dict[str, dict]:
        return {"detection": SECTION}

    def eval_inputs(self, data) -> EvalInputs:
        return EvalInputs.of("detection", self.name, data)

    def build_bundle(self, name: str, num_classes: int, settings: Mapping[str, Any]) -> ModelBundle:
        module = build_module(num_classes, settings)
        loss_fn = model_losses.batch_loss_fn(loss_ratios_are_outputs, losses.LOSS_WEIGHTS)
        return ModelBundle(
            module=module,
            task=self.name,
            num_classes=num_classes,
            loss_fn=loss_fn,
            metrics_fn=_no_batched_metrics,
            name=name,
            input_key="image",
            config=dict(settings),
            loss_ratios_fn=loss_ratios_are_outputs,
            loss_weights=losses.LOSS_WEIGHTS,
            finalize_metrics=finalize_metrics,
            describe_metrics=describe_metrics,
            best_metric=BEST_METRIC,
            metric_label="val box AP",
            pad_label=-1,
            example_unit="image",
            train_forward=train_forward(module),
            init_fn=init_fn(module),
        )

    def save_figure(self, workdir, bundle, module, variables, source, data):
        """The detections with the backbone block's attention ('detections.png')."""
        from dnl_jax.analysis import viz_detection  # imported lazily: matplotlib

        return viz_detection.save_detection_figure(workdir, module, variables, source)


TASK = Detection()

__all__ = [
    "TASK",
    "Detection",
    "DetectionEvalSource",
    "SECTION",
    "CONTEXTS",
    "CONTEXT_STAGES",
    "MODEL_DEFAULTS",
    "MODULE_OVERRIDES",
    "context_block_indices",
    "build_module",
]
