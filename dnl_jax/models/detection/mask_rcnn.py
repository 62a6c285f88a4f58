"""Mask R-CNN with FPN on our torchvision-style ResNet (`ResNetV1b`, output stride 32), with
optional NL / DNL / GC blocks placed per stage, static shapes throughout.

Batch (padded, channel-last):
    image        `[B, H, W, 3]` float, H and W multiples of 32
    image_size   `[B, 2]` valid (height, width) before padding
    image_id     `[B]` int (optional): seeds each image's sampling
    gt_boxes     `[B, G, 4]` (x1, y1, x2, y2) pixels     gt_labels `[B, G]` int (0..K−1)
    gt_masks     `[B, G, H, W]` 0/1                       gt_valid  `[B, G]` bool
      or gt_mask_crops `[B, G, S, S]` 0/1: each gt mask resampled inside its box
                   (`targets.mask_targets_from_crops`; S² bytes per instance, not H · W)

`loss(batch, train=True)` needs the 'sampler' rng (random RoI / anchor sampling); calling the
module predicts detections. The official DNL detection backbone is
`context=ContextSpec('dnl_official', 'after_add', reduction=4)`, `context_block_indices=((),
(), (-2,), ())` (c4) or `((), (), (-2,), (0, 1, 2))` (c4+c5_all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from dnl_jax.models import losses as model_losses
from dnl_jax.models.detection import anchors as anchor_ops
from dnl_jax.models.detection import heads, losses, proposals, roi_align, targets
from dnl_jax.models.residual import ContextSpec
from dnl_jax.models.resnet_v1b import ResNetV1b

Array = jax.Array
Dtype = Any

BACKBONE_STRIDE = 32


class MaskRCNN(nn.Module):
    """Mask R-CNN R-FPN. Attributes default to mmdet 3.x's `mask-rcnn_r50_fpn_1x_coco`.

    Attributes:
      num_classes: object classes K (background excluded).
      depth, stem_channels, base_channels: the ResNet (shrink widths for tiny tests).
      context, context_block_indices: context blocks in the backbone (see module docstring).
      frozen_bn: backbone batch norm uses running statistics (mmdet norm_eval=True).
      fpn_channels, fc_channels, conv_channels: neck / head widths (256, 1024, 256).
      box_head: '2fc' (mmdet) or '4conv1fc' (official DNL code); head_norm None or 'batch'.
      neck_norm, mask_norm: None (mmdet's default) or 'batch' (the official DNL configs' synced
        norm) in the FPN's lateral and output convs / the mask head's convs.
      rpn_train, rpn_test: (pre-NMS per level, post-NMS) proposal counts.
      rpn_sampler, rcnn_sampler: fixed-size samplers (256 at 0.5, 512 at 0.25).
      roi_grid_limit: RoIAlign sample lattice (see roi_align.py).
      axis_name: batch-norm axis under pmap (neck and heads with norm 'batch'; the backbone's
        BN is frozen by default).
      dtype: compute dtype (bf16 supported); losses and box decoding run in float32.
    """

    num_classes: int = 80
    depth: int = 50
    stem_channels: int = 64
    base_channels: int = 64
    context: ContextSpec | None = None
    context_block_indices: Sequence[Sequence[int]] | None = None
    frozen_bn: bool = True
    fpn_channels: int = 256
    fc_channels: int = 1024
    conv_channels: int = 256
    box_head: str = "2fc"
    head_norm: str | None = None
    neck_norm: str | None = None
    mask_norm: str | None = None
    anchor_strides: tuple[int, ...] = anchor_ops.MASK_RCNN_STRIDES
    anchor_scales: tuple[float, ...] = anchor_ops.MASK_RCNN_SCALES
    anchor_ratios: tuple[float, ...] = anchor_ops.MASK_RCNN_RATIOS
    rpn_train: tuple[int, int] = (2000, 1000)
    rpn_test: tuple[int, int] = (1000, 1000)
    rpn_nms_iou: float = 0.7
    rpn_sampler: targets.SamplerConfig = targets.RPN_SAMPLER
    rcnn_sampler: targets.SamplerConfig = targets.RCNN_SAMPLER
    box_roi_size: int = 7
    mask_roi_size: int = 14
    finest_scale: float = 56.0
    roi_grid_limit: int = 4
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100
    axis_name: str | None = None
    dtype: Dtype | None = None

    def setup(self):
        self.backbone = ResNetV1b(
            depth=self.depth,
            stem_channels=self.stem_channels,
            base_channels=self.base_channels,
            output_stride=BACKBONE_STRIDE,
            frozen_bn=self.frozen_bn,
            zero_init_residual=False,
            context=self.context,
            context_block_indices=self.context_block_indices,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )
        self.neck = heads.FPN(
            self.fpn_channels,
            num_outs=len(self.anchor_strides),
            norm=self.neck_norm,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )
        self.rpn_head = heads.RPNHead(
            len(self.anchor_scales) * len(self.anchor_ratios), self.fpn_channels, dtype=self.dtype
        )
        self.bbox_head = heads.BoxHead(
            self.num_classes,
            self.box_head,
            self.conv_channels,
            self.fc_channels,
            self.head_norm,
            self.axis_name,
            dtype=self.dtype,
        )
        self.mask_head = heads.MaskHead(
            self.num_classes,
            self.conv_channels,
            norm=self.mask_norm,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )

    def _features(self, image: Array, train: bool) -> tuple[Array, ...]:
        if image.shape[1] % BACKBONE_STRIDE or image.shape[2] % BACKBONE_STRIDE:
            raise ValueError(
                f"image size {image.shape[1:3]} is not a multiple of {BACKBONE_STRIDE}; pad "
                "images (bottom/right) to a multiple of 32 as mmdet's Pad(size_divisor=32)."
            )
        return self.neck(self.backbone(image, train=train), train=train)

    def _rpn(self, levels: Sequence[Array]):
        outputs = [self.rpn_head(x) for x in levels]
        sizes = [x.shape[1:3] for x in levels]
        level_anchors = anchor_ops.multi_level_anchors(
            sizes, self.anchor_strides, self.anchor_scales, self.anchor_ratios
        )
        return [o[0] for o in outputs], [o[1] for o in outputs], level_anchors

    def _roi_features(self, levels: Sequence[Array], rois: Array, size: int) -> Array:
        """FPN levels (all but the P6 pool level) and rois `[B, S, 4]` → `[B, S, size, size, C]`."""
        roi_levels = levels[: len(self.anchor_strides) - 1]

        def align(maps, boxes):
            return roi_align.multi_level_roi_align(
                maps,
                boxes,
                (size, size),
                self.anchor_strides[: len(roi_levels)],
                self.finest_scale,
                self.roi_grid_limit,
            )

        return jax.vmap(align)(list(roi_levels), rois)

    def build(self, image: Array) -> Array:
        """Runs every layer once without proposals, NMS or RoIAlign: a cheap method for
        `init` (`model.init(rng, image, method=model.build)`). Returns a scalar."""
        levels = self._features(image, train=False)
        logits, deltas, _ = self._rpn(levels)
        roi = jnp.zeros((1, self.box_roi_size, self.box_roi_size, self.fpn_channels), image.dtype)
        box_logits, _ = self.bbox_head(roi)
        mask_roi = jnp.zeros(
            (1, self.mask_roi_size, self.mask_roi_size, self.fpn_channels), image.dtype
        )
        return logits[0].sum() + box_logits.sum() + self.mask_head(mask_roi).sum()

    def __call__(self, image: Array, image_size: Array, train: bool = False) -> dict[str, Array]:
        """Detections per image: `boxes` `[B, D, 4]`, `scores` `[B, D]`, `labels` `[B, D]`,
        `valid` `[B, D]` and `masks` `[B, D, 28, 28]` (probabilities of the label's channel),
        D = max_detections."""
        levels = self._features(image, train)
        logits, deltas, level_anchors = self._rpn(levels)
        rois, roi_valid = proposals.rpn_proposals(
            logits, deltas, level_anchors, image_size, *self.rpn_test, self.rpn_nms_iou
        )
        box_logits, box_deltas = self.bbox_head(
            self._roi_features(levels, rois, self.box_roi_size), train=train
        )
        detect = lambda *args: proposals.rcnn_detections(  # noqa: E731
            *args, self.score_threshold, self.nms_iou, self.max_detections
        )
        boxes, scores, labels, valid = jax.vmap(detect)(
            rois, roi_valid, box_logits, box_deltas, image_size
        )
        mask_logits = self.mask_head(
            self._roi_features(levels, boxes, self.mask_roi_size), train=train
        )
        chosen = jnp.take_along_axis(mask_logits, labels[..., None, None, None], axis=-1)[..., 0]
        return {
            "boxes": boxes,
            "scores": scores,
            "labels": labels,
            "valid": valid,
            "masks": jax.nn.sigmoid(chosen.astype(jnp.float32)),
        }

    def loss(self, batch: dict[str, Array], train: bool = True) -> tuple[Array, dict[str, Array]]:
        """Total loss and its parts (RPN cls / bbox, RCNN cls / bbox, mask, RCNN accuracy) of
        this batch on its own."""
        return model_losses.combine_ratios(self.loss_ratios(batch, train), losses.LOSS_WEIGHTS)

    def loss_ratios(
        self, batch: dict[str, Array], train: bool = True
    ) -> dict[str, tuple[Array, Array]]:
        """{name: (numerator, denominator)} of every loss and of the RCNN accuracy (see
        losses.py); the trainer sums both parts over devices before dividing."""
        levels = self._features(batch["image"], train)
        logits, deltas, level_anchors = self._rpn(levels)
        rpn_keys, rcnn_keys = _sampling_keys(self.make_rng("sampler"), batch)
        all_anchors = jnp.concatenate([jnp.asarray(a) for a in level_anchors])
        rpn_targets = jax.vmap(targets.rpn_targets, in_axes=(0, None, 0, 0))(
            rpn_keys, all_anchors, batch["gt_boxes"], batch["gt_valid"]
        )
        ratios = losses.rpn_loss_ratios(
            jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1), rpn_targets
        )
        rois, roi_valid = proposals.rpn_proposals(
            logits, deltas, level_anchors, batch["image_size"], *self.rpn_train, self.rpn_nms_iou
        )
        sample = lambda key, boxes, valid, gt_boxes, gt_labels, gt_valid: (  # noqa: E731
            targets.rcnn_targets(
                key,
                boxes,
                valid,
                gt_boxes,
                gt_labels,
                gt_valid,
                self.num_classes,
                sampler=self.rcnn_sampler,
            )
        )
        rcnn_targets = jax.vmap(sample)(
            rcnn_keys, rois, roi_valid, batch["gt_boxes"], batch["gt_labels"], batch["gt_valid"]
        )
        box_logits, box_deltas = self.bbox_head(
            self._roi_features(levels, rcnn_targets["rois"], self.box_roi_size), train=train
        )
        ratios.update(losses.rcnn_loss_ratios(box_logits, box_deltas, rcnn_targets))
        ratios["loss_mask"] = self._mask_loss(levels, rcnn_targets, batch, train)
        return ratios

    def _mask_loss(self, levels, rcnn_targets, batch, train: bool) -> tuple[Array, Array]:
        """Mask loss ratio on the sampled positives (they fill the first `max_positives`
        slots). With `mask_norm` 'batch', training statistics cover all `max_positives` slots,
        also those a batch with fewer positives fills with other RoIs (mmdet: positives only)."""
        count = min(self.rcnn_sampler.max_positives, rcnn_targets["rois"].shape[1])
        first = jax.tree.map(lambda x: x[:, :count], rcnn_targets)
        mask_logits = self.mask_head(
            self._roi_features(levels, first["rois"], self.mask_roi_size), train=train
        )
        mask_size = mask_logits.shape[-2]
        if "gt_mask_crops" in batch:
            mask_targets = jax.vmap(targets.mask_targets_from_crops, in_axes=(0, 0, 0, 0, None))(
                first["rois"],
                first["gt_index"],
                batch["gt_boxes"],
                batch["gt_mask_crops"],
                mask_size,
            )
        else:
            mask_targets = jax.vmap(targets.mask_targets, in_axes=(0, 0, 0, None))(
                first["rois"], first["gt_index"], batch["gt_masks"], mask_size
            )
        return losses.mask_loss_ratio(
            mask_logits, first["labels"], mask_targets, first["delta_weight"]
        )


def _sampling_keys(rng: Array, batch: dict[str, Array]) -> tuple[Array, Array]:
    """Per-image RPN and RCNN sampling keys `[B]`. With `image_id` `[B]` in the batch, each key
    is folded from the image's id, so an image draws the same samples however the batch is
    split over devices (jit on the global batch == pmap on its shards)."""
    if "image_id" in batch:
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, batch["image_id"])
    else:
        keys = jax.random.split(rng, batch["image"].shape[0])
    split = jax.vmap(jax.random.split)(keys)
    return split[:, 0], split[:, 1]


def frozen_stage_mask(params: dict, frozen_stages: int = 1) -> dict:
    """A pytree of bools like `params`: False for the backbone's stem and its first
    `frozen_stages` stages (mmdet frozen_stages=1: stem + res2 are not trained), True elsewhere.
    Use with `optax.masked` or `optax.multi_transform`."""
    frozen_prefixes = ("conv1", "bn1") + tuple(f"layer{s}_" for s in range(1, frozen_stages + 1))

    def trainable(path: tuple[str, ...]) -> bool:
        in_backbone = len(path) > 1 and path[0] == "backbone"
        return not (in_backbone and path[1].startswith(frozen_prefixes))

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: trainable(path) for path in flat})


__all__ = ["MaskRCNN", "frozen_stage_mask", "BACKBONE_STRIDE"]
