"""Metric finalisation against NumPy: mIoU, per-class IoU and pixel accuracy from label maps."""

import numpy as np
import pytest

from dnl_jax.models.metrics import metrics_from_confusion as segmentation_metrics


def _reference_metrics(truth, pred, num_classes):
    """Per-class IoU / pixel accuracy straight from label maps (no confusion matrix)."""
    ious = []
    for k in range(num_classes):
        inter = np.sum((truth == k) & (pred == k))
        union = np.sum((truth == k) | (pred == k))
        ious.append(inter / union if union else np.nan)
    return np.array(ious), np.mean(truth == pred)


def test_segmentation_metrics_match_numpy_from_label_maps():
    rng = np.random.default_rng(0)
    num_classes = 6
    truth = rng.integers(0, num_classes - 1, size=5000)  # class 5 never true ...
    pred = np.where(rng.random(5000) < 0.6, truth, rng.integers(0, num_classes - 1, size=5000))
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (truth, pred), 1)
    metrics = segmentation_metrics(confusion)
    iou, pixel_accuracy = _reference_metrics(truth, pred, num_classes)
    np.testing.assert_allclose(metrics["per_class_iou"], iou, rtol=1e-12)
    assert np.isnan(metrics["per_class_iou"][5])  # ... nor predicted: excluded from the mean
    np.testing.assert_allclose(metrics["miou"], np.nanmean(iou), rtol=1e-12)
    np.testing.assert_allclose(metrics["pixel_accuracy"], pixel_accuracy, rtol=1e-12)


def test_segmentation_metrics_perfect_and_bad_shape():
    metrics = segmentation_metrics(np.diag([3, 4, 5]))
    assert metrics["miou"] == 1.0 and metrics["pixel_accuracy"] == 1.0
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(np.zeros((2, 3)))
