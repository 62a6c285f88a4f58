"""Validation metrics per task, from counts summed over batches, devices and hosts.

Segmentation, with C the `[K, K]` confusion matrix (rows = truth, columns = prediction):
    IoU_k       = C_kk / (Σ_j C_kj + Σ_i C_ik − C_kk)     (NaN where class k never occurs, in
                                                           truth nor prediction)
    mIoU        = mean of IoU_k over classes with a defined IoU (mmseg's nanmean)
    pixel acc.  = Σ_k C_kk / Σ C
    class acc_k = C_kk / Σ_j C_kj                          (NaN where class k has no true pixel)
Classification (video clips): top-1 accuracy = correct / count.

Each task has one metric that picks the best checkpoint (`BEST_METRIC`, recorded in the
checkpoint as `val_<name>`) and a one-line summary for the console (`describe`).
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


def classification_metrics(sums) -> dict:
    """{'accuracy': correct / count (NaN for no example), 'correct', 'count': int} from the
    bundle's summed `{'correct', 'count'}`."""
    correct, count = int(sums["correct"]), int(sums["count"])
    return {"accuracy": correct / count if count else float("nan"), "correct": correct,
            "count": count}


# The metric that ranks checkpoints, per task (a key of `metrics_from_sums`' result).
BEST_METRIC = {"segmentation": "miou", "classification": "accuracy"}
METRIC_LABELS = {"miou": "val mIoU", "accuracy": "val top-1 accuracy (1 clip)"}


def metrics_from_sums(task: str, sums: dict) -> dict:
    """The task's val metrics from the bundle's `metrics_fn` sums (see models/registry.py)."""
    if task == "segmentation":
        return segmentation_metrics(sums["confusion"])
    return classification_metrics(sums)


def describe(val: dict) -> str:
    """One console line for the val metrics of either task."""
    if "miou" in val:
        return f"val mIoU {val['miou']:.4f}, pixel accuracy {val['pixel_accuracy']:.4f}"
    line = f"val top-1 accuracy (1 clip per video) {val['accuracy']:.4f}"
    if "video_accuracy" in val:
        line += (f"; multi-view: clip accuracy {val['clip_accuracy']:.4f}, video accuracy "
                 f"{val['video_accuracy']:.4f}")
    return line
