"""Per-image segmentation evaluation (`type='segmentation'`): each val image at its own size,
resized to config.data.segmentation.base_size (aspect kept) and normalised, inferred whole or by
sliding windows, optionally at several scales and mirrored (segmentation_inference.py), its
scores resized back to the label's resolution before the argmax; mIoU from the confusion matrix
summed over hosts.

    config.evals.val = dict(type='segmentation', every_steps=8000, mode='slide',
                            crop_size=(769, 769), stride=(513, 513), scales=(1.0,), flip=False)

The resize follows the model's `align_corners` setting (`bundle.config`, default False). The
evaluate command adds the IoU table (`format_iou_table`) and, with --output_dir, one prediction
PNG per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from dnl_jax import IGNORE_LABEL
from dnl_jax.data import transforms
from dnl_jax.evaluators import common
from dnl_jax.evaluators.segmentation_inference import MODES, predict_scores


def confusion_matrix(
    prediction: np.ndarray, label: np.ndarray, num_classes: int, *, ignore_label: int = IGNORE_LABEL
) -> np.ndarray:
    """int64 `[K, K]`, rows = ground truth, columns = prediction; ignored pixels left out.

    Host-side twin of `dnl_jax.models.losses.confusion_matrix` (which runs inside jit); here, at
    the edge, labels that are neither in [0, K) nor `ignore_label` raise ValueError (a
    dataset/num_classes mismatch, which would otherwise silently shift the metrics).
    """
    label = np.asarray(label).astype(np.int64).ravel()
    prediction = np.asarray(prediction).astype(np.int64).ravel()
    keep = label != ignore_label
    label, prediction = label[keep], prediction[keep]
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(
            f"labels {sorted(set(np.unique(label)) - set(range(num_classes)))[:5]} "
            f"outside [0, {num_classes}) and not {ignore_label}; does "
            "data.num_classes match the dataset?"
        )
    return np.bincount(label * num_classes + prediction, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def format_iou_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """A plain-text table: one row per class (IoU, accuracy in %), then the summary."""
    iou, accuracy = metrics["per_class_iou"], metrics["per_class_accuracy"]
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} classes.")
    width = max(12, *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for name, class_iou, class_acc in zip(class_names, iou, accuracy, strict=False):
        lines.append(f"{name:<{width}}  {100 * class_iou:6.2f}  {100 * class_acc:6.2f}")
    lines.append(f"{'mIoU':<{width}}  {100 * metrics['miou']:6.2f}")
    lines.append(f"{'mAcc':<{width}}  {100 * metrics['mean_accuracy']:6.2f}")
    lines.append(f"{'aAcc':<{width}}  {100 * metrics['pixel_accuracy']:6.2f}")
    return "\n".join(lines)


def evaluate_segmentation(
    predict_fn: common.PredictFn,
    examples: Iterable[dict],
    *,
    num_classes: int,
    base_size: Sequence[int] | None = None,
    mean=None,
    std=None,
    output_dir: str | None = None,
    write_prediction: Callable[[np.ndarray, str, str], str] | None = None,
    **inference,
) -> np.ndarray:
    """Confusion matrix `[K, K]` of `predict_fn` over `examples` ({'image', 'label'[, 'name']}).

    Each image is resized to `base_size` (aspect kept) and normalised, inferred with
    `predict_scores(**inference)` (mode, crop_size, stride, scales, flip, align_corners), and its
    scores resized back to the label's resolution before the argmax. With `output_dir`, writes
    each prediction with `write_prediction(prediction, name, output_dir)` (the dataset's
    submission format, `EvalInputs.write_prediction`; examples then need 'name').
    """
    norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for example in examples:
        image = transforms.segmentation_eval_preprocess(example, base_size=base_size, **norm)[
            "image"
        ]
        label = example["label"]
        scores = predict_scores(predict_fn, image[None], output_size=label.shape, **inference)
        common.check_finite(np.sum(~np.isfinite(scores)), "scores")
        prediction = np.argmax(scores[0], axis=-1).astype(np.uint8)
        confusion += confusion_matrix(prediction, label, num_classes)
        if output_dir is not None and write_prediction is not None:
            write_prediction(prediction, example["name"], output_dir)
    return confusion


def inference_settings(section, model_kwargs=None) -> dict[str, Any]:
    """`predict_scores` kwargs of an evaluator section (mode, crop_size, stride, scales, flip;
    the (0, 0) placeholders of crop_size / stride, unused in 'whole' mode, become None) and of
    the model's settings `model_kwargs` (align_corners, default False)."""
    return {
        "mode": section["mode"],
        "crop_size": common.positive_pair(section["crop_size"]),
        "stride": common.positive_pair(section["stride"]),
        "scales": tuple(float(v) for v in section["scales"]),
        "flip": bool(section["flip"]),
        "align_corners": bool((model_kwargs or {}).get("align_corners", False)),
    }


class SegmentationEvaluator(common.Evaluator):
    """Per-image segmentation (module docstring); metrics: the bundle's finalisation of the
    summed confusion matrix (mIoU, per-class IoU, accuracies)."""

    KEYS = {
        "every_steps": 50,
        "mode": "whole",
        "crop_size": (0, 0),
        "stride": (0, 0),
        "scales": (1.0,),
        "flip": False,
    }
    INPUTS = ("images",)

    @classmethod
    def check(cls, name: str, settings: dict, inputs, **hardware) -> None:
        super().check(name, settings, inputs, **hardware)
        where = f"config.evals.{name}"
        if settings["mode"] not in MODES:
            raise ValueError(f"{where}.mode={settings['mode']!r}; choose one of {MODES}.")
        if settings["mode"] == "slide" and not (
            common.positive_pair(settings["crop_size"]) and common.positive_pair(settings["stride"])
        ):
            raise ValueError(
                f"{where}.mode='slide' needs {where}.crop_size and {where}.stride (h, w) >= 1, "
                f"got {tuple(settings['crop_size'])} and {tuple(settings['stride'])}."
            )
        scales = tuple(settings["scales"])
        if not scales or not all(s > 0 for s in scales):
            raise ValueError(f"{where}.scales={scales} must be positive ratios.")

    def run(self, state) -> dict:
        context, inputs = self.context, self.context.inputs
        confusion = evaluate_segmentation(
            self.predict_fn(state),
            common.host_examples(context.source, context.between_batches),
            num_classes=inputs.num_classes,
            base_size=inputs.base_size,
            output_dir=context.output_dir,
            write_prediction=inputs.write_prediction,
            **inference_settings(self.settings, getattr(context.bundle, "config", {})),
        )
        return context.bundle.finalize_metrics({"confusion": common.sum_over_hosts(confusion)})
