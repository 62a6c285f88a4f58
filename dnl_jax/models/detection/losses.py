"""Mask R-CNN losses (mmdet 3.x `mask-rcnn_r50_fpn` config, every loss weight 1):

    RPN    sigmoid cross-entropy over the sampled anchors + L1 on the positives' deltas, both
           divided by the number of sampled anchors in the batch (mmdet's avg_factor
           num_total_pos + num_total_neg).
    RCNN   softmax cross-entropy over the sampled RoIs (divided by their number) + L1 on the
           positives' deltas of their gt class, divided by the number of sampled RoIs
           (mmdet's avg_factor bbox_targets.size(0)).
    mask   binary cross-entropy of the gt-class channel against the 28×28 targets, averaged
           over positive RoIs × pixels.

Each loss is a ratio (numerator, denominator) whose two parts the train step sums over
micro-batches, devices and hosts before dividing (dnl_jax/models/losses.py `combine_ratios`),
so the loss of a step is the loss of its global batch however it is split; an empty
denominator gives 0 (mmdet's avg_factor is at least 1 and its numerator is 0 then too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


Ratio = tuple[Array, Array]  # (numerator, denominator): summed over devices before dividing


def rpn_loss_ratios(logits: Array, deltas: Array, targets: dict[str, Array]) -> dict[str, Ratio]:
    """logits `[B, A]`, deltas `[B, A, 4]`; targets from `targets.rpn_targets` (batched) →
    {'loss_rpn_cls', 'loss_rpn_bbox'}: (sum over the batch, sampled anchors in the batch)."""
    weight = targets["label_weight"].astype(jnp.float32)
    count = weight.sum()
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets["objectness"])
    l1 = jnp.abs(deltas.astype(jnp.float32) - targets["deltas"]).sum(-1)
    return {
        "loss_rpn_cls": ((bce * weight).sum(), count),
        "loss_rpn_bbox": ((l1 * targets["delta_weight"]).sum(), count),
    }


def rcnn_loss_ratios(logits: Array, deltas: Array, targets: dict[str, Array]) -> dict[str, Ratio]:
    """logits `[B, S, K + 1]` (background last), class-specific deltas `[B, S, 4K]`; targets
    from `targets.rcnn_targets` (batched) → {'loss_cls', 'loss_bbox', 'rcnn_accuracy'}, each
    over the sampled RoIs of the batch."""
    weight = targets["label_weight"].astype(jnp.float32)
    count = weight.sum()
    labels = targets["labels"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    num_classes = logits.shape[-1] - 1
    per_class = deltas.astype(jnp.float32).reshape(deltas.shape[:-1] + (num_classes, 4))
    class_index = jnp.minimum(labels, num_classes - 1)[..., None, None]
    chosen = jnp.take_along_axis(per_class, class_index, axis=-2)[..., 0, :]
    l1 = jnp.abs(chosen - targets["deltas"]).sum(-1)
    correct = jax.lax.stop_gradient(((logits.argmax(-1) == labels) * weight).sum())
    return {
        "loss_cls": ((ce * weight).sum(), count),
        "loss_bbox": ((l1 * targets["delta_weight"]).sum(), count),
        "rcnn_accuracy": (correct, count),
    }


def mask_loss_ratio(
    mask_logits: Array, labels: Array, mask_targets: Array, positive: Array
) -> Ratio:
    """mask_logits `[B, P, M, M, K]`, labels `[B, P]`, targets `[B, P, M, M]`, positive
    `[B, P]` → (Σ over positive RoIs of their mean pixel BCE, number of positive RoIs)."""
    num_classes = mask_logits.shape[-1]
    class_index = jnp.minimum(labels, num_classes - 1)[..., None, None, None]
    chosen = jnp.take_along_axis(mask_logits.astype(jnp.float32), class_index, axis=-1)[..., 0]
    bce = optax.sigmoid_binary_cross_entropy(chosen, mask_targets).mean(axis=(-2, -1))
    positive = positive.astype(jnp.float32)
    return (bce * positive).sum(), positive.sum()


# Every loss weighs 1 (mmdet's config); 'rcnn_accuracy' is a metric only.
LOSS_WEIGHTS = {
    "loss_rpn_cls": 1.0,
    "loss_rpn_bbox": 1.0,
    "loss_cls": 1.0,
    "loss_bbox": 1.0,
    "loss_mask": 1.0,
}

__all__ = ["rpn_loss_ratios", "rcnn_loss_ratios", "mask_loss_ratio", "LOSS_WEIGHTS"]
