"""Metric finalisation: per-batch counts (summed over batches, devices and hosts) → val metrics.

Segmentation, with C the `[K, K]` confusion matrix (rows = truth, columns = prediction):
    IoU_k       = C_kk / (Σ_j C_kj + Σ_i C_ik − C_kk)     (NaN where class k never occurs, in
                                                           truth nor prediction)
    mIoU        = mean of IoU_k over classes with a defined IoU (mmseg's nanmean)
    pixel acc.  = Σ_k C_kk / Σ C
    class acc_k = C_kk / Σ_j C_kj                          (NaN where class k has no true pixel)
Classification (video clips): top-1 accuracy = correct / count.

Each task's bundle (`registry.ModelBundle`) carries its finaliser and the metric that ranks
checkpoints (`best_metric`), and its console line (`describe_metrics`: the `describe_*` here
for segmentation and video, the detector's own in tasks/detection.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def metrics_from_confusion(confusion) -> dict:
    """{'miou', 'pixel_accuracy', 'mean_accuracy': float, 'per_class_iou', 'per_class_accuracy':
    float64 [K]} from an integer confusion matrix `[K, K]`.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [K, K] matrix, got shape {confusion.shape}.")
    true_positive = np.diag(confusion)
    per_truth = confusion.sum(axis=1)
    per_prediction = confusion.sum(axis=0)
    union = per_truth + per_prediction - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(per_truth > 0, true_positive / per_truth, np.nan)
    total = confusion.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": (
            float(np.nanmean(class_accuracy)) if np.any(per_truth > 0) else float("nan")
        ),
        "per_class_iou": iou,
        "per_class_accuracy": class_accuracy,
    }


def segmentation_metrics_from_sums(sums: Mapping) -> dict:
    """`metrics_from_confusion` of the segmentor's summed `{'confusion': [K, K]}`."""
    return metrics_from_confusion(sums["confusion"])


def accuracy_from_counts(sums: Mapping) -> dict:
    """{'accuracy': correct / count (NaN for no example), 'correct', 'count': int} from the
    video classifier's summed `{'correct', 'count'}`."""
    correct, count = int(sums["correct"]), int(sums["count"])
    return {
        "accuracy": correct / count if count else float("nan"),
        "correct": correct,
        "count": count,
    }


def describe_segmentation(metrics: Mapping) -> str:
    """The console line of `metrics_from_confusion`'s result."""
    return f"val mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}"


def describe_accuracy(metrics: Mapping) -> str:
    """The console line of `accuracy_from_counts`' result (the batched view of each video)."""
    return f"val top-1 accuracy (1 clip per video) {metrics['accuracy']:.4f}"


__all__ = [
    "metrics_from_confusion",
    "segmentation_metrics_from_sums",
    "accuracy_from_counts",
    "describe_segmentation",
    "describe_accuracy",
]
