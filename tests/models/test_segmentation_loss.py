"""The segmentation loss against NumPy: pixel cross-entropy with the ignore label, OHEM's kept
pixels, the confusion matrix and the bundle's metric counts."""

import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax.models import losses

# ---------------------------------------------------------------------------------------------
# Loss, OHEM and metrics against NumPy.
# ---------------------------------------------------------------------------------------------


def numpy_cross_entropy(logits, labels, keep, weights=None):
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    safe = np.clip(labels, 0, logits.shape[-1] - 1)
    nll = -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
    w = keep.astype(np.float64) * (1.0 if weights is None else np.asarray(weights)[safe])
    return (w * nll).sum() / w.sum()


def random_logits_labels(seed, shape=(2, 6, 7), num_classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape + (num_classes,)).astype(np.float32) * 2
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < 0.3] = 255
    return logits, labels


def test_loss_ignores_255_and_matches_numpy():
    logits, labels = random_logits_labels(0)
    keep = labels != 255
    loss = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(loss, numpy_cross_entropy(logits, labels, keep), rtol=1e-5)
    # Whatever the network predicts at ignored pixels, the loss is the same.
    noise = 50.0 * np.random.default_rng(1).normal(size=logits.shape)
    changed = np.where(keep[..., None], logits, noise)
    changed_loss = losses.pixel_cross_entropy(jnp.asarray(changed), jnp.asarray(labels))
    np.testing.assert_allclose(changed_loss, loss, rtol=1e-6)
    weights = [0.5, 1.0, 2.0, 0.1]
    weighted = losses.pixel_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), class_weights=weights
    )
    np.testing.assert_allclose(
        weighted, numpy_cross_entropy(logits, labels, keep, weights), rtol=1e-5
    )


def numpy_ohem_keep(logits, labels, thresh, min_kept):
    """The official OhemCrossEntropy2d selection, applied to each image on its own."""
    return np.stack(
        [
            numpy_ohem_keep_batch(logits[i : i + 1], labels[i : i + 1], thresh, min_kept)[0]
            for i in range(len(labels))
        ]
    )


def numpy_ohem_keep_batch(logits, labels, thresh, min_kept):
    """The official OhemCrossEntropy2d selection over a batch, with a NumPy sort."""
    valid = labels != 255
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    p_true = np.take_along_axis(probs, np.clip(labels, 0, 3)[..., None], -1)[..., 0]
    if min_kept > valid.sum():
        return valid
    threshold = thresh
    if min_kept > 0:
        ranked = np.sort(p_true[valid])
        threshold = max(thresh, ranked[min(len(ranked), min_kept) - 1])
    return valid & (p_true <= threshold)


@pytest.mark.parametrize("thresh, min_kept", [(0.7, 0), (0.3, 10), (0.05, 40), (0.7, 10_000)])
def test_ohem_keeps_hard_pixels_and_at_least_min_kept(thresh, min_kept):
    logits, labels = random_logits_labels(2)
    valid = labels != 255
    keep = np.asarray(
        losses.ohem_keep_mask(
            jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid), thresh, min_kept
        )
    )
    np.testing.assert_array_equal(keep, numpy_ohem_keep(logits, labels, thresh, min_kept))
    for image_keep, image_valid in zip(keep, valid, strict=False):  # min_kept holds per image
        assert image_keep.sum() >= min(min_kept, image_valid.sum())
    assert not keep[~valid].any()
    loss = losses.pixel_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), ohem=dict(thresh=thresh, min_kept=min_kept)
    )
    np.testing.assert_allclose(loss, numpy_cross_entropy(logits, labels, keep), rtol=1e-5)


def test_confusion_matrix_matches_numpy_count():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=(3, 9, 11))
    labels[rng.random(labels.shape) < 0.2] = 255
    labels[0, 0, :3] = 7  # out of range: excluded like the ignore label
    predictions = rng.integers(0, 5, size=labels.shape)
    expected = np.zeros((5, 5), np.int64)
    for t, p in zip(labels.ravel(), predictions.ravel(), strict=False):
        if t < 5:
            expected[t, p] += 1
    got = losses.confusion_matrix(jnp.asarray(predictions), jnp.asarray(labels), 5)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, expected)


def test_bundle_metrics_fn_confusion_of_argmax(tiny):
    bundle, _ = tiny
    logits, labels = random_logits_labels(4, num_classes=5)
    metrics = bundle.metrics_fn({"logits": jnp.asarray(logits)}, {"label": jnp.asarray(labels)})
    expected = losses.confusion_matrix(jnp.argmax(logits, -1), jnp.asarray(labels), 5)
    np.testing.assert_array_equal(metrics["confusion"], expected)
