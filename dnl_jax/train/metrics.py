"""Segmentation metrics from a confusion matrix summed over batches, devices and hosts.

With C the `[K, K]` confusion matrix (rows = truth, columns = prediction):
    IoU_k       = C_kk / (Σ_j C_kj + Σ_i C_ik − C_kk)     (NaN where class k never occurs, in
                                                           truth nor prediction)
    mIoU        = mean of IoU_k over classes with a defined IoU (mmseg's nanmean)
    pixel acc.  = Σ_k C_kk / Σ C
    class acc_k = C_kk / Σ_j C_kj                          (NaN where class k has no true pixel)
"""

from __future__ import annotations

import numpy as np


def segmentation_metrics(confusion) -> dict:
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
        "mean_accuracy": (float(np.nanmean(class_accuracy)) if np.any(per_truth > 0)
                          else float("nan")),
        "per_class_iou": iou,
        "per_class_accuracy": class_accuracy,
    }
