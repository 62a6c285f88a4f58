"""Greedy non-maximum suppression with static shapes (jit / vmap friendly).

The classic algorithm (torchvision `nms`, mmcv `nms`): visit boxes by descending score, keep a
box unless a kept box overlaps it with IoU > threshold. Here the visit is a `fori_loop` over the
sorted candidates; each step computes one row of IoUs (O(N) memory, never an N × N matrix), and
the result is the first `max_output` kept indices, padded, with a validity mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dnl_jax.models.detection import boxes as box_ops

Array = jax.Array


def nms(
    boxes: Array, scores: Array, valid: Array, iou_threshold: float, max_output: int
) -> tuple[Array, Array]:
    """Greedy NMS of one set of boxes.

    Args:
      boxes: `[N, 4]`; scores: `[N]`; valid: `[N]` bool (invalid boxes are never kept).
      iou_threshold: a box is suppressed by a kept box with IoU strictly above it.
      max_output: static number of output slots.

    Returns:
      indices `[max_output]` into the inputs, in descending score order (ties: lower index
      first), and their validity `[max_output]` (False in padding slots, whose index is 0).
    """
    boxes, scores, valid = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid)
    order = jnp.argsort(-jnp.where(valid, scores, -jnp.inf), stable=True)
    sorted_boxes = boxes[order]
    sorted_valid = valid[order]

    def visit(i, state):
        keep, suppressed = state
        kept = sorted_valid[i] & ~suppressed[i]
        overlaps = box_ops.box_iou(sorted_boxes[i][None], sorted_boxes)[0]
        suppressed = suppressed | (kept & (overlaps > iou_threshold))
        return keep.at[i].set(kept), suppressed

    count = boxes.shape[0]
    initial = (jnp.zeros(count, bool), jnp.zeros(count, bool))
    keep, _ = jax.lax.fori_loop(0, count, visit, initial)
    positions = jnp.nonzero(keep, size=max_output, fill_value=0)[0]
    return order[positions], jnp.arange(max_output) < keep.sum()


def multiclass_nms(
    boxes: Array, scores: Array, score_threshold: float, iou_threshold: float, max_output: int
) -> tuple[Array, Array, Array, Array]:
    """Per-class NMS, then the best `max_output` over all classes (mmdet `multiclass_nms`:
    candidates are (box, class) pairs with score > `score_threshold`; classes never suppress
    each other).

    Args:
      boxes: `[N, K, 4]` class-specific boxes; scores: `[N, K]` (background excluded).

    Returns:
      boxes `[max_output, 4]`, scores `[max_output]`, labels `[max_output]` (int32, 0..K−1) and
      validity `[max_output]`, sorted by descending score.
    """
    per_class = jax.vmap(nms, in_axes=(1, 1, 1, None, None))
    kept, kept_valid = per_class(
        boxes, scores, scores > score_threshold, iou_threshold, max_output
    )  # [K, max_output]
    kept_scores = jnp.where(kept_valid, jnp.take_along_axis(scores.T, kept, axis=1), -jnp.inf)
    top_scores, flat = jax.lax.top_k(kept_scores.reshape(-1), max_output)
    labels = (flat // max_output).astype(jnp.int32)
    indices = kept.reshape(-1)[flat]
    valid = jnp.isfinite(top_scores)
    out_boxes = boxes[indices, labels]
    return out_boxes, jnp.where(valid, top_scores, 0.0), labels, valid


__all__ = ["nms", "multiclass_nms"]
