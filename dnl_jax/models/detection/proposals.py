"""From head outputs to boxes, with static shapes: RPN proposals, RCNN detections, and masks
pasted into the image.

RPN (mmdet 3.x `RPNHead._bbox_post_process`): per level the `pre_nms` best anchors by sigmoid
score, decoded and clipped, boxes with zero width or height dropped (min_bbox_size 0), NMS at
0.7 within each level (mmdet's batched_nms over level ids never lets levels suppress each other),
then the `post_nms` best over all levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dnl_jax.models.detection import boxes as box_ops
from dnl_jax.models.detection import nms as nms_ops

Array = jax.Array


def _level_candidates(
    logits: Array, deltas: Array, anchors: Array, image_size: Array, pre_nms: int, slots: int
):
    """One image, one level: the `pre_nms` best anchors of logits `[N]`, deltas `[N, 4]`,
    anchors `[N, 4]`, decoded and clipped → boxes `[slots, 4]`, scores `[slots]`, validity
    `[slots]` (padding and empty boxes invalid)."""
    scores, index = jax.lax.top_k(jax.nn.sigmoid(logits), min(pre_nms, logits.shape[0]))
    decoded = box_ops.RPN_CODER.decode(anchors[index], deltas[index], image_size)
    valid = (decoded[:, 2] > decoded[:, 0]) & (decoded[:, 3] > decoded[:, 1])
    pad = slots - index.shape[0]
    return (
        jnp.pad(decoded, ((0, pad), (0, 0))),
        jnp.pad(scores, (0, pad)),
        jnp.pad(valid, (0, pad)),
    )


def rpn_proposals(
    logits: Sequence[Array],
    deltas: Sequence[Array],
    anchors: Sequence[Array],
    image_sizes: Array,
    pre_nms: int,
    post_nms: int,
    iou_threshold: float = 0.7,
) -> tuple[Array, Array]:
    """Per level l: logits `[B, N_l]`, deltas `[B, N_l, 4]`, anchors `[N_l, 4]`; image_sizes
    `[B, 2]` (valid height, width). → proposals `[B, post_nms, 4]` (descending score) and their
    validity `[B, post_nms]`. Gradients do not flow into proposals (mmdet detaches them).

    The levels are padded to one candidate count and their NMS runs as one vmapped loop: as
    many sequential steps as one level has candidates, not the sum over levels."""
    logits = [jax.lax.stop_gradient(x).astype(jnp.float32) for x in logits]
    deltas = [jax.lax.stop_gradient(x).astype(jnp.float32) for x in deltas]
    slots = max(min(pre_nms, x.shape[1]) for x in logits)
    per_level_nms = jax.vmap(nms_ops.nms, in_axes=(0, 0, 0, None, None))

    def one_image(image_logits, image_deltas, image_size):
        boxes, scores, valid = (
            jnp.stack(parts)
            for parts in zip(
                *[
                    _level_candidates(logit, delta, jnp.asarray(anchor), image_size, pre_nms, slots)
                    for logit, delta, anchor in zip(
                        image_logits, image_deltas, anchors, strict=False
                    )
                ],
                strict=False,
            )
        )  # [L, slots, ...]
        keep, kept = per_level_nms(boxes, scores, valid, iou_threshold, min(post_nms, slots))
        boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1).reshape(-1, 4)
        scores = jnp.where(kept, jnp.take_along_axis(scores, keep, axis=1), -jnp.inf)
        top, index = jax.lax.top_k(scores.reshape(-1), min(post_nms, scores.size))
        return boxes[index], jnp.isfinite(top)

    boxes, valid = jax.vmap(one_image)(logits, deltas, image_sizes)
    if boxes.shape[1] < post_nms:  # tiny inputs: fewer candidates than slots
        pad = post_nms - boxes.shape[1]
        boxes = jnp.pad(boxes, ((0, 0), (0, pad), (0, 0)))
        valid = jnp.pad(valid, ((0, 0), (0, pad)))
    return boxes, valid


def rcnn_detections(
    rois: Array,
    roi_valid: Array,
    logits: Array,
    deltas: Array,
    image_size: Array,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
):
    """One image (mmdet `BBoxHead.predict_by_feat`): rois `[S, 4]`, logits `[S, K + 1]`,
    class-specific deltas `[S, 4K]` → boxes `[D, 4]`, scores `[D]`, labels `[D]`, validity `[D]`
    (D = max_detections) after per-class NMS."""
    num_classes = logits.shape[-1] - 1
    probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, :num_classes]
    probabilities = jnp.where(roi_valid[:, None], probabilities, 0.0)
    per_class = deltas.astype(jnp.float32).reshape(-1, num_classes, 4)
    decoded = box_ops.RCNN_CODER.decode(rois[:, None, :], per_class, image_size)
    return nms_ops.multiclass_nms(
        decoded, probabilities, score_threshold, iou_threshold, max_detections
    )


def _paste_weights(start: Array, end: Array, mask_size: int, image_extent: int) -> Array:
    """`[image_extent, mask_size]` bilinear weights (zero padding) that sample a mask spanning
    [start, end) at each image pixel centre, as `grid_sample(align_corners=False)` in mmdet's
    `_do_paste_mask`: u = (y + 0.5 − start) / (end − start) · mask_size − 0.5."""
    pixel = jnp.arange(image_extent, dtype=jnp.float32) + 0.5
    u = (pixel - start) / jnp.maximum(end - start, 1e-6) * mask_size - 0.5
    cells = jnp.arange(mask_size, dtype=jnp.float32)
    return jnp.maximum(1.0 - jnp.abs(u[:, None] - cells[None, :]), 0.0)


def paste_masks(masks: Array, boxes: Array, height: int, width: int) -> Array:
    """Mask probabilities `[D, M, M]` in their boxes `[D, 4]` → image probabilities
    `[D, height, width]`. Bilinear sampling is separable, so each paste is two matmuls."""
    mask_size = masks.shape[-1]

    def one(mask, box):
        rows = _paste_weights(box[1], box[3], mask_size, height)
        cols = _paste_weights(box[0], box[2], mask_size, width)
        return rows @ mask @ cols.T

    return jax.vmap(one)(masks.astype(jnp.float32), boxes)


__all__ = ["rpn_proposals", "rcnn_detections", "paste_masks"]
