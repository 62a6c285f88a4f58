"""Mask R-CNN losses (mmdet 3.x `mask-rcnn_r50_fpn` config, every loss weight 1):

    RPN    sigmoid cross-entropy over the sampled anchors + L1 on the positives' deltas, both
           divided by the number of sampled anchors in the batch (mmdet's avg_factor
           num_total_pos + num_total_neg).
    RCNN   softmax cross-entropy over the sampled RoIs (divided by their number) + L1 on the
           positives' deltas of their gt class, divided by the number of sampled RoIs
           (mmdet's avg_factor bbox_targets.size(0)).
    mask   binary cross-entropy of the gt-class channel against the 28×28 targets, averaged
           over positive RoIs × pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _safe_count(weights: Array) -> Array:
    return jnp.maximum(weights.sum(), 1.0)


def rpn_loss(logits: Array, deltas: Array, targets: dict[str, Array]) -> dict[str, Array]:
    """logits `[B, A]`, deltas `[B, A, 4]`; targets from `targets.rpn_targets` (batched)."""
    weight = targets["label_weight"]
    count = _safe_count(weight)
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets["objectness"])
    l1 = jnp.abs(deltas.astype(jnp.float32) - targets["deltas"]).sum(-1)
    return {"loss_rpn_cls": (bce * weight).sum() / count,
            "loss_rpn_bbox": (l1 * targets["delta_weight"]).sum() / count}


def rcnn_loss(logits: Array, deltas: Array, targets: dict[str, Array]) -> dict[str, Array]:
    """logits `[B, S, K + 1]`, class-specific deltas `[B, S, 4K]`; targets from
    `targets.rcnn_targets` (batched)."""
    weight = targets["label_weight"]
    count = _safe_count(weight)
    labels = targets["labels"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    num_classes = logits.shape[-1] - 1
    per_class = deltas.astype(jnp.float32).reshape(deltas.shape[:-1] + (num_classes, 4))
    class_index = jnp.minimum(labels, num_classes - 1)[..., None, None]
    chosen = jnp.take_along_axis(per_class, class_index, axis=-2)[..., 0, :]
    l1 = jnp.abs(chosen - targets["deltas"]).sum(-1)
    accuracy = ((logits.argmax(-1) == labels) * weight).sum() / count
    return {"loss_cls": (ce * weight).sum() / count,
            "loss_bbox": (l1 * targets["delta_weight"]).sum() / count,
            "rcnn_accuracy": jax.lax.stop_gradient(accuracy)}


def mask_loss(mask_logits: Array, labels: Array, mask_targets: Array,
              positive: Array) -> Array:
    """mask_logits `[B, P, M, M, K]`, labels `[B, P]`, targets `[B, P, M, M]`, positive
    `[B, P]` → mean BCE over positive RoIs and pixels (0 without positives)."""
    num_classes = mask_logits.shape[-1]
    class_index = jnp.minimum(labels, num_classes - 1)[..., None, None, None]
    chosen = jnp.take_along_axis(mask_logits.astype(jnp.float32), class_index, axis=-1)[..., 0]
    bce = optax.sigmoid_binary_cross_entropy(chosen, mask_targets).mean(axis=(-2, -1))
    return (bce * positive).sum() / _safe_count(positive)


__all__ = ["rpn_loss", "rcnn_loss", "mask_loss"]
