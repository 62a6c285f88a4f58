"""Segmentation and classification losses and count metrics (pure jax.numpy, jit-friendly).

Pixel cross-entropy with an ignore label (PyTorch `CrossEntropyLoss(ignore_index, weight)`):

    loss = Σ_p w[y_p] · (−log softmax(z_p)[y_p]) / Σ_p w[y_p]      over kept pixels p

(w ≡ 1 without class weights). Pixels whose label is the ignore label, or outside [0, K), are
never kept. Note: mmseg's `CrossEntropyLoss` (avg_non_ignore=False) divides by all pixels
instead; the official DNL code, like PyTorch, divides by the kept pixels, as here.

OHEM (official DNL / pytorch-segmentation-toolbox `OhemCrossEntropy2d`): over the whole batch,
with p_true the softmax probability of the true class and k = min(min_kept, #valid pixels),

    threshold = max(thresh, k-th smallest p_true over valid pixels);  keep p_true <= threshold

so hard pixels (p_true below `thresh`) are always kept and at least `min_kept` pixels are.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

from dnl_jax import IGNORE_LABEL  # noqa: E402  (one definition, re-exported here)


def valid_pixels(labels: Array, num_classes: int, ignore_label: int = IGNORE_LABEL) -> Array:
    """Boolean mask of pixels that count: label != ignore and 0 <= label < K."""
    return (labels != ignore_label) & (labels >= 0) & (labels < num_classes)


def pixel_log_likelihood(logits: Array, labels: Array) -> Array:
    """log softmax(z)[y] per pixel, float32; labels outside [0, K) give 0 (masked later).

    logits `[..., K]`, labels `[...]` int → `[...]`.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.clip(labels, 0, logits.shape[-1] - 1)
    return jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]


def ohem_keep_mask(logits: Array, labels: Array, valid: Array, thresh: float,
                   min_kept: int) -> Array:
    """Pixels that OHEM keeps (see the module docstring); no gradient flows through the mask.

    logits `[B, H, W, K]`, labels/valid `[B, H, W]` → bool `[B, H, W]`.
    """
    p_true = jnp.exp(jax.lax.stop_gradient(pixel_log_likelihood(logits, labels)))
    # Invalid pixels sort last (probabilities never exceed 1).
    ranked = jnp.sort(jnp.where(valid, p_true, 2.0).reshape(-1))
    num_valid = jnp.sum(valid)
    k = jnp.minimum(min(min_kept, ranked.shape[0]), num_valid)
    kth_smallest = jnp.where(k > 0, ranked[jnp.maximum(k - 1, 0)], 0.0)
    threshold = jnp.maximum(thresh, kth_smallest)
    return valid & (p_true <= threshold)


def pixel_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    ignore_label: int = IGNORE_LABEL,
    class_weights: Optional[Sequence[float]] = None,
    ohem: Optional[dict] = None,
) -> Array:
    """Mean pixel cross-entropy over kept pixels (0 when none is kept). Scalar float32.

    logits `[B, H, W, K]` (any float dtype), labels `[B, H, W]` int; `ohem` None or
    `dict(thresh=0.7, min_kept=100000)`.
    """
    num_classes = logits.shape[-1]
    keep = valid_pixels(labels, num_classes, ignore_label)
    if ohem is not None:
        keep = ohem_keep_mask(logits, labels, keep, ohem["thresh"], ohem["min_kept"])
    weights = keep.astype(jnp.float32)
    if class_weights is not None:
        table = jnp.asarray(class_weights, jnp.float32)
        weights = weights * table[jnp.clip(labels, 0, num_classes - 1)]
    nll = -pixel_log_likelihood(logits, labels)
    total = jnp.sum(weights)
    return jnp.sum(weights * nll) / jnp.maximum(total, 1e-12)


def confusion_matrix(predictions: Array, labels: Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> Array:
    """int32 `[K, K]`: entry [t, p] counts valid pixels with ground truth t predicted as p.

    predictions, labels: int arrays of the same shape; invalid labels (see `valid_pixels`) are
    excluded. Sums over batches/devices give the dataset's confusion matrix.
    """
    valid = valid_pixels(labels, num_classes, ignore_label)
    index = jnp.where(valid, labels * num_classes + predictions, 0).reshape(-1)
    counts = jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.int32),
                          length=num_classes * num_classes)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def classification_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy; logits `[B, K]`, labels `[B]` int. Scalar float32."""
    return -jnp.mean(pixel_log_likelihood(logits, labels))


def classification_counts(logits: Array, labels: Array) -> dict[str, Array]:
    """`{'correct': int32 scalar, 'count': int32 scalar}` (top-1). Negative labels mark padding
    (evaluation batches filled up to a fixed size) and are not counted."""
    valid = labels >= 0
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) & valid).astype(jnp.int32)
    return {"correct": correct, "count": jnp.sum(valid).astype(jnp.int32)}


def check_ohem(ohem: Optional[dict]) -> Optional[dict]:
    """Validates an OHEM setting; returns a plain dict with float thresh and int min_kept."""
    if ohem is None:
        return None
    if hasattr(ohem, "keys"):  # dicts and ml_collections ConfigDicts alike
        ohem = {key: ohem[key] for key in ohem.keys()}
    if not isinstance(ohem, dict) or set(ohem) != {"thresh", "min_kept"}:
        raise ValueError(
            f"ohem must be None or dict(thresh=..., min_kept=...), e.g. dict(thresh=0.7, "
            f"min_kept=100000); got {ohem!r}."
        )
    thresh, min_kept = float(ohem["thresh"]), int(ohem["min_kept"])
    if not 0.0 < thresh <= 1.0 or min_kept < 0:
        raise ValueError(f"ohem needs 0 < thresh <= 1 and min_kept >= 0; got {ohem!r}.")
    return {"thresh": thresh, "min_kept": min_kept}


def check_class_weights(class_weights, num_classes: int) -> Optional[tuple[float, ...]]:
    if class_weights is None:
        return None
    weights = tuple(float(w) for w in class_weights)
    if len(weights) != num_classes or min(weights) < 0:
        raise ValueError(
            f"class_weights needs {num_classes} non-negative values (one per class); got "
            f"{len(weights)}: {weights}."
        )
    return weights


__all__ = [
    "IGNORE_LABEL", "valid_pixels", "pixel_log_likelihood", "ohem_keep_mask",
    "pixel_cross_entropy", "confusion_matrix", "classification_cross_entropy",
    "classification_counts", "check_ohem", "check_class_weights",
]
