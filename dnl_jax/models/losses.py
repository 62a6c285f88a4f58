"""Segmentation and classification losses and count metrics (pure jax.numpy, jit-friendly).

One loss definition, whatever the device / host / micro-batch split. Over the GLOBAL batch of an
optimizer step (every device, host and micro-batch together), pixel cross-entropy with an ignore
label is

    loss = Σ_p w_p · (−log softmax(z_p)[y_p]) / N,     w_p = keep_p · class_weight[y_p]

(class_weight ≡ 1 without class weights; keep_p: the label is not the ignore label, is in
[0, K), and, with OHEM, the pixel is selected), with the normaliser N a choice
(`loss_normalizer`):

- 'kept' (default; the official DNL code, PyTorch `CrossEntropyLoss(weight, ignore_index)`):
  N = Σ_p w_p, the (class-weighted) number of kept pixels;
- 'all' (mmseg's `CrossEntropyLoss(avg_non_ignore=False)`): N = the number of label pixels,
  ignored ones included (mmseg divides the per-pixel loss map, zero at ignored pixels, by its
  size).

So the loss functions here return a *sum* and a *count*; the train step (dnl_jax/train/step.py)
adds them over micro-batches, devices and hosts before dividing. Averaging per-device or
per-micro-batch means instead would weight pixels by how many valid pixels their shard happens to
have (real crops are padded with the ignore label), i.e. optimise another objective.

OHEM (official DNL / pytorch-segmentation-toolbox `OhemCrossEntropy2d`), here *per image*: with
p_true the softmax probability of the true class and k = min(min_kept, #valid pixels of the image),

    threshold = max(thresh, k-th smallest p_true over the image's valid pixels);
    keep p_true <= threshold

so hard pixels (p_true below `thresh`) are always kept and at least `min_kept` pixels of each
image are. Per image, the selection of an image does not depend on which other images share its
device or micro-batch. The official code (and mmseg's `OHEMPixelSampler`) select over one GPU's
batch: 100,000 pixels per GPU of 2 images (Cityscapes, 769x769 crops), i.e. `min_kept=50000`
per image here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from dnl_jax import IGNORE_LABEL  # one definition, re-exported here

Array = jax.Array
NORMALIZERS = ("kept", "all")


def valid_pixels(labels: Array, num_classes: int, ignore_label: int = IGNORE_LABEL) -> Array:
    """Boolean mask of pixels that count: label != ignore and 0 <= label < K."""
    return (labels != ignore_label) & (labels >= 0) & (labels < num_classes)


def out_of_range_pixels(labels: Array, num_classes: int, ignore_label: int = IGNORE_LABEL) -> Array:
    """int32 count of labels that are neither the ignore label nor in [0, K): a data error (e.g.
    a label map not mapped to train ids, or data.num_classes too small), left out of the loss
    and the confusion matrix, and reported by the trainer."""
    wrong = (labels != ignore_label) & ~valid_pixels(labels, num_classes, ignore_label)
    return jnp.sum(wrong, dtype=jnp.int32)


def pixel_log_likelihood(logits: Array, labels: Array) -> Array:
    """log softmax(z)[y] per pixel, float32; labels outside [0, K) give 0 (masked later).

    logits `[..., K]`, labels `[...]` int → `[...]`.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.clip(labels, 0, logits.shape[-1] - 1)
    return jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]


def ohem_keep_mask(
    logits: Array, labels: Array, valid: Array, thresh: float, min_kept: int
) -> Array:
    """Pixels that OHEM keeps, image by image (see the module docstring); no gradient flows
    through the mask.

    logits `[B, H, W, K]`, labels/valid `[B, H, W]` → bool `[B, H, W]`.
    """
    p_true = jnp.exp(jax.lax.stop_gradient(pixel_log_likelihood(logits, labels)))
    batch = labels.shape[0]
    # Invalid pixels sort last (probabilities never exceed 1).
    ranked = jnp.sort(jnp.where(valid, p_true, 2.0).reshape(batch, -1), axis=-1)
    num_valid = jnp.sum(valid.reshape(batch, -1), axis=-1)
    k = jnp.minimum(min(min_kept, ranked.shape[1]), num_valid)
    kth_smallest = jnp.take_along_axis(ranked, jnp.maximum(k - 1, 0)[:, None], axis=-1)[:, 0]
    threshold = jnp.maximum(thresh, jnp.where(k > 0, kth_smallest, 0.0))
    return valid & (p_true <= threshold[:, None, None])


def pixel_cross_entropy_sum(
    logits: Array,
    labels: Array,
    *,
    ignore_label: int = IGNORE_LABEL,
    class_weights: Sequence[float] | None = None,
    ohem: dict | None = None,
    normalizer: str = "kept",
    keep: Array | None = None,
) -> tuple[Array, Array]:
    """(Σ_p w_p · nll_p, N) of the module docstring, both float32 scalars; the loss of a global
    batch is the ratio of the sums of both over all its shards.

    logits `[B, H, W, K]` (any float dtype), labels `[B, H, W]` int; `ohem` None or
    `dict(thresh=0.7, min_kept=50000)`; `keep` bool `[B, H, W]`: the pixels OHEM selected, when
    already known (computed here otherwise).
    """
    num_classes = logits.shape[-1]
    if keep is None:
        keep = valid_pixels(labels, num_classes, ignore_label)
        if ohem is not None:
            keep = ohem_keep_mask(logits, labels, keep, ohem["thresh"], ohem["min_kept"])
    weights = keep.astype(jnp.float32)
    if class_weights is not None:
        table = jnp.asarray(class_weights, jnp.float32)
        weights = weights * table[jnp.clip(labels, 0, num_classes - 1)]
    nll = -pixel_log_likelihood(logits, labels)
    count = jnp.sum(weights) if normalizer == "kept" else jnp.float32(labels.size)
    return jnp.sum(weights * nll), count


def safe_ratio(numerator: Array, denominator: Array) -> Array:
    """numerator / denominator, 0 where the denominator is 0 (nothing kept, no valid pixel)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def pixel_cross_entropy(logits: Array, labels: Array, **kwargs) -> Array:
    """The loss of one batch on its own: `safe_ratio(*pixel_cross_entropy_sum(...))`. Scalar
    float32; same arguments as `pixel_cross_entropy_sum`."""
    return safe_ratio(*pixel_cross_entropy_sum(logits, labels, **kwargs))


def combine_ratios(
    ratios: Mapping[str, tuple[Array, Array]], loss_weights: Mapping[str, float]
) -> tuple[Array, dict[str, Array]]:
    """(loss, metrics) from ratio statistics `{name: (numerator, denominator)}`: every metric is
    its numerator over its denominator, the loss Σ_name loss_weights[name] · metric[name] over
    the names present (e.g. 'aux_loss' only in training)."""
    metrics = {name: safe_ratio(num, den) for name, (num, den) in ratios.items()}
    loss = sum(weight * metrics[name] for name, weight in loss_weights.items() if name in metrics)
    return jnp.asarray(loss, jnp.float32), metrics


def batch_loss_fn(ratios_fn, loss_weights: Mapping[str, float]):
    """`(outputs, batch) -> (loss, metrics + {'loss'})` of one batch on its own, from a bundle's
    `ratios_fn(outputs, batch) -> {name: (numerator, denominator)}` (`combine_ratios`)."""

    def loss_fn(outputs, batch):
        loss, metrics = combine_ratios(ratios_fn(outputs, batch), loss_weights)
        return loss, {**metrics, "loss": loss}

    return loss_fn


def confusion_matrix(
    predictions: Array, labels: Array, num_classes: int, ignore_label: int = IGNORE_LABEL
) -> Array:
    """int32 `[K, K]`: entry [t, p] counts valid pixels with ground truth t predicted as p.

    predictions, labels: int arrays of the same shape; invalid labels (see `valid_pixels`) are
    excluded. Sums over batches/devices give the dataset's confusion matrix.
    """
    valid = valid_pixels(labels, num_classes, ignore_label)
    index = jnp.where(valid, labels * num_classes + predictions, 0).reshape(-1)
    counts = jnp.bincount(
        index, weights=valid.reshape(-1).astype(jnp.int32), length=num_classes * num_classes
    )
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def classification_counts(logits: Array, labels: Array) -> dict[str, Array]:
    """`{'correct': int32 scalar, 'count': int32 scalar}` (top-1). Negative labels mark padding
    (evaluation batches filled up to a fixed size) and are not counted."""
    valid = labels >= 0
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) & valid).astype(jnp.int32)
    return {"correct": correct, "count": jnp.sum(valid).astype(jnp.int32)}


def check_ohem(ohem: dict | None) -> dict | None:
    """Validates an OHEM setting; returns a plain dict with float thresh and int min_kept."""
    if ohem is None:
        return None
    if hasattr(ohem, "keys"):  # dicts and ml_collections ConfigDicts alike
        ohem = {key: ohem[key] for key in ohem}
    if not isinstance(ohem, dict) or set(ohem) != {"thresh", "min_kept"}:
        raise ValueError(
            f"ohem must be None or dict(thresh=..., min_kept=...), e.g. dict(thresh=0.7, "
            f"min_kept=50000) (per image); got {ohem!r}."
        )
    thresh, min_kept = float(ohem["thresh"]), int(ohem["min_kept"])
    if not 0.0 < thresh <= 1.0 or min_kept < 0:
        raise ValueError(f"ohem needs 0 < thresh <= 1 and min_kept >= 0; got {ohem!r}.")
    return {"thresh": thresh, "min_kept": min_kept}


def check_normalizer(normalizer) -> str:
    if normalizer not in NORMALIZERS:
        raise ValueError(
            f"loss_normalizer={normalizer!r}; choose 'kept' (divide by the kept "
            "pixels, the official DNL code) or 'all' (divide by all label pixels, "
            "ignored ones included: mmseg's avg_non_ignore=False)."
        )
    return normalizer


def check_class_weights(class_weights, num_classes: int) -> tuple[float, ...] | None:
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
    "IGNORE_LABEL",
    "NORMALIZERS",
    "valid_pixels",
    "out_of_range_pixels",
    "pixel_log_likelihood",
    "ohem_keep_mask",
    "pixel_cross_entropy_sum",
    "pixel_cross_entropy",
    "safe_ratio",
    "combine_ratios",
    "batch_loss_fn",
    "confusion_matrix",
    "classification_counts",
    "check_ohem",
    "check_class_weights",
    "check_normalizer",
]
