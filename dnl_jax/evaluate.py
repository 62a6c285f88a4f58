"""Evaluation as the published numbers were obtained: whole-image, sliding-window and
multi-scale + flip inference, mIoU from a confusion matrix, video clip / multi-view accuracy.

Inference is model-agnostic: it takes `predict_fn(images f32 [B, h, w, 3]) -> logits
[B, h', w', K]` (any array type; logits at another resolution are resized bilinearly to the
input's), so the same code serves a Flax model, an imported PyTorch one or a test's fake.

Sliding window (mmseg `slide_inference`): windows of `crop_size` = (ch, cw) every `stride` =
(sh, sw), the last row/column shifted back to end at the border; per pixel, the logits of all
windows covering it are averaged:  logits(p) = Σ_{w ∋ p} logits_w(p) / #{w ∋ p}.
Multi-scale + flip (mmseg `aug_test`): the image is resized by each ratio in `scales` (and
mirrored if `flip`), inferred (whole or slide), mirrored back, resized to the output size, and the
softmax probabilities are averaged over all views.

Command line (needs a trained checkpoint; see `main` below):
    python -m dnl_jax.evaluate --config experiments/configs/NAME.py \
        --checkpoint runs/NAME/checkpoints/80000 --split val [--output_dir preds/]
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np

# One definition of mIoU / accuracies (NaN-aware, as mmseg) for training and evaluation.
from dnl_jax.train.metrics import segmentation_metrics  # noqa: F401  (re-exported)

PredictFn = Callable[[np.ndarray], Any]
IGNORE_LABEL = 255
MODES = ("whole", "slide")


def _resize(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of `[B, H, W, C]` to `[B, *size, C]` (half-pixel centres, no antialias,
    as OpenCV / PyTorch `align_corners=False`)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return np.asarray(x)
    shape = (x.shape[0], int(size[0]), int(size[1]), x.shape[3])
    return np.asarray(jax.image.resize(np.asarray(x, np.float32), shape, "bilinear",
                                       antialias=False))


def whole_inference(predict_fn: PredictFn, images: np.ndarray) -> np.ndarray:
    """`[B, H, W, 3]` → logits `[B, H, W, K]` from one call on the whole images."""
    return _resize(np.asarray(predict_fn(images)), images.shape[1:3])


def sliding_windows(height: int, width: int, crop_size: Sequence[int],
                    stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window, all of size min(crop, image) per axis (mmseg's grid)."""
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    if min(crop_h, crop_w, stride_h, stride_w) < 1:
        raise ValueError(f"crop_size {tuple(crop_size)} and stride {tuple(stride)} must be >= 1.")
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return boxes


def slide_inference(predict_fn: PredictFn, images: np.ndarray, *, crop_size: Sequence[int],
                    stride: Sequence[int], window_batch: int = 8) -> np.ndarray:
    """`[B, H, W, 3]` → logits `[B, H, W, K]` averaged over overlapping windows.

    Windows (of all images) go to `predict_fn` in batches of `window_batch`.
    """
    batch, height, width = images.shape[:3]
    boxes = sliding_windows(height, width, crop_size, stride)
    crops = np.stack([images[b, y1:y2, x1:x2] for b in range(batch) for y1, y2, x1, x2 in boxes])
    outputs = [whole_inference(predict_fn, crops[i:i + window_batch])
               for i in range(0, len(crops), window_batch)]
    window_logits = np.concatenate(outputs)
    logits = np.zeros((batch, height, width, window_logits.shape[-1]), np.float32)
    counts = np.zeros((1, height, width, 1), np.float32)
    for (y1, y2, x1, x2) in boxes:
        counts[:, y1:y2, x1:x2] += 1
    for index, (b, (y1, y2, x1, x2)) in enumerate(
            (b, box) for b in range(batch) for box in boxes):
        logits[b, y1:y2, x1:x2] += window_logits[index]
    return logits / counts


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def predict_scores(predict_fn: PredictFn, images: np.ndarray, *, mode: str = "whole",
                   crop_size: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   output_size: Sequence[int] | None = None) -> np.ndarray:
    """Class scores `[B, *output_size, K]` (default output size: the images').

    One view (scales == (1.0,), no flip): the logits. Several views: the mean softmax
    probabilities over scales x flips (module docstring). Argmax gives the prediction either way.
    """
    if mode not in MODES:
        raise ValueError(f"eval mode {mode!r}; choose one of {MODES}.")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("eval mode 'slide' needs eval.crop_size and eval.stride, e.g. "
                         "(512, 1024) and (341, 683) for Cityscapes.")
    height, width = images.shape[1:3]
    output_size = tuple(output_size or (height, width))
    flips = (False, True) if flip else (False,)
    views = [(s, f) for s in scales for f in flips]
    total = None
    for scale, flipped in views:
        size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        view = _resize(images, size)
        view = view[:, :, ::-1] if flipped else view
        if mode == "slide":
            logits = slide_inference(predict_fn, view, crop_size=crop_size, stride=stride)
        else:
            logits = whole_inference(predict_fn, view)
        logits = _resize(logits[:, :, ::-1] if flipped else logits, output_size)
        scores = logits if len(views) == 1 else _softmax(logits)
        total = scores if total is None else total + scores
    return total / len(views)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def confusion_matrix(prediction: np.ndarray, label: np.ndarray, num_classes: int, *,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """int64 `[K, K]`, rows = ground truth, columns = prediction; ignored pixels left out.

    Host-side twin of `dnl_jax.models.losses.confusion_matrix` (which runs inside jit and drops
    invalid labels silently); here, at the edge, invalid labels are an error.

    Labels that are neither in [0, K) nor `ignore_label` raise ValueError (a dataset/num_classes
    mismatch, which would otherwise silently shift the metrics).
    """
    label = np.asarray(label).astype(np.int64).ravel()
    prediction = np.asarray(prediction).astype(np.int64).ravel()
    keep = label != ignore_label
    label, prediction = label[keep], prediction[keep]
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"labels {sorted(set(np.unique(label)) - set(range(num_classes)))[:5]} "
                         f"outside [0, {num_classes}) and not {ignore_label}; does "
                         "data.num_classes match the dataset?")
    return np.bincount(label * num_classes + prediction,
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def format_iou_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """A plain-text table: one row per class (IoU, accuracy in %), then the summary."""
    iou, accuracy = metrics["per_class_iou"], metrics["per_class_accuracy"]
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} classes.")
    width = max(12, *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for name, class_iou, class_acc in zip(class_names, iou, accuracy):
        lines.append(f"{name:<{width}}  {100 * class_iou:6.2f}  {100 * class_acc:6.2f}")
    lines.append(f"{'mIoU':<{width}}  {100 * metrics['miou']:6.2f}")
    lines.append(f"{'mAcc':<{width}}  {100 * metrics['mean_accuracy']:6.2f}")
    lines.append(f"{'aAcc':<{width}}  {100 * metrics['pixel_accuracy']:6.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


def prediction_png_name(dataset: str, name: str) -> str:
    """File name of a prediction: Cityscapes' `CITY_SEQ_FRAME_leftImg8bit.png`, else NAME.png."""
    return f"{name}_leftImg8bit.png" if dataset == "cityscapes" else f"{name}.png"


def write_prediction_png(prediction: np.ndarray, dataset: str, name: str, output_dir: str) -> str:
    """Writes one uint8 `[H, W]` train-id prediction in the dataset's submission ids.

    Cityscapes: label ids (`cityscapes.train_ids_to_label_ids`), the official benchmark format;
    ADE20K: train id + 1 (the challenge's 1..150); others: train ids. Returns the path.
    """
    from dnl_jax.data import cityscapes, records

    prediction = np.asarray(prediction, np.uint8)
    if dataset == "cityscapes":
        prediction = cityscapes.train_ids_to_label_ids(prediction)
    elif dataset == "ade20k":
        prediction = prediction + 1
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, prediction_png_name(dataset, name))
    with open(path, "wb") as f:
        f.write(records.encode_png(prediction))
    return path


def evaluate_segmentation(predict_fn: PredictFn, examples: Iterable[dict], *, num_classes: int,
                          base_size: Sequence[int] | None = None, mean=None, std=None,
                          output_dir: str | None = None, dataset: str = "",
                          **inference) -> np.ndarray:
    """Confusion matrix `[K, K]` of `predict_fn` over `examples` ({'image', 'label'[, 'name']}).

    Each image is resized to `base_size` (aspect kept) and normalised, inferred with
    `predict_scores(**inference)` (mode, crop_size, stride, scales, flip), and its scores resized
    back to the label's resolution before the argmax. With `output_dir`, writes one PNG per
    example (`write_prediction_png`; examples then need 'name').
    """
    from dnl_jax.data import transforms

    norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for example in examples:
        image = transforms.segmentation_eval_preprocess(
            example, base_size=base_size, **norm)["image"]
        label = example["label"]
        scores = predict_scores(predict_fn, image[None], output_size=label.shape, **inference)
        prediction = np.argmax(scores[0], axis=-1).astype(np.uint8)
        confusion += confusion_matrix(prediction, label, num_classes)
        if output_dir is not None:
            write_prediction_png(prediction, dataset, example["name"], output_dir)
    return confusion


def video_view_counts(predict_fn: PredictFn, examples: Iterable[dict], *, clip_len: int,
                      stride: int, crop_size: int, num_clips: int = 10, num_crops: int = 3,
                      short_side: int | None = None) -> np.ndarray:
    """int64 `[4]` = (correct views, views, correct videos, videos) for `predict_fn(videos
    [V,T,c,c,3]) -> logits [V,K]` on the num_clips x num_crops views of each example; a video is
    correct when the argmax of its views' mean softmax is its label. Summable over hosts."""
    from dnl_jax.data import transforms

    counts = np.zeros(4, np.int64)
    for example in examples:
        views = transforms.video_eval_views(example, clip_len=clip_len, stride=stride,
                                            crop_size=crop_size, num_clips=num_clips,
                                            num_crops=num_crops, short_side=short_side)
        logits = np.asarray(predict_fn(views["video"]), np.float32)
        label = int(example["label"])
        counts += (int(np.sum(logits.argmax(-1) == label)), len(logits),
                   int(_softmax(logits).mean(0).argmax() == label), 1)
    return counts


def video_accuracies(counts: np.ndarray) -> dict[str, float]:
    """{'clip_accuracy': top-1 of single views, 'video_accuracy': top-1 of the views' averaged
    softmax} from `video_view_counts` (summed over hosts)."""
    clip_hits, clip_total, video_hits, video_total = (int(c) for c in counts)
    if video_total == 0:
        raise ValueError("evaluate_video: no examples.")
    return {"clip_accuracy": clip_hits / clip_total, "video_accuracy": video_hits / video_total}


def evaluate_video(predict_fn: PredictFn, examples: Iterable[dict], **view_settings
                   ) -> dict[str, float]:
    """`video_accuracies` of `video_view_counts(predict_fn, examples, **view_settings)`."""
    return video_accuracies(video_view_counts(predict_fn, examples, **view_settings))


# ----------------------------------------------------------------------------------------------
# Command line: a checkpoint on a split
# ----------------------------------------------------------------------------------------------


def inference_settings(config) -> dict[str, Any]:
    """predict_scores kwargs from `config.eval` (mode, crop_size, stride, scales, flip).

    The schema's (0, 0) placeholders for crop_size / stride (unused in 'whole' mode) become None.
    """
    def size_or_none(value):
        return tuple(int(v) for v in value) if value and min(value) > 0 else None

    return {"mode": config.eval.mode, "crop_size": size_or_none(config.eval.crop_size),
            "stride": size_or_none(config.eval.stride),
            "scales": tuple(float(s) for s in config.eval.scales),
            "flip": bool(config.eval.flip)}


def _predict_fn(config, checkpoint: str):
    """(jitted logits function, bundle) of the checkpoint's model (config.model)."""
    from dnl_jax.models import get_model
    from dnl_jax.train.checkpoint import load_variables

    bundle = get_model(config.model.name, int(config.data.num_classes),
                       **config.model.kwargs.to_dict())
    variables = load_variables(checkpoint)
    return jax.jit(lambda x: bundle.module.apply(variables, x, train=False)["logits"].astype(
        np.float32)), bundle


def evaluate_checkpoint(config, checkpoint: str, split: str, *, output_dir: str | None = None,
                        log=print) -> dict[str, Any]:
    """Evaluates checkpoint `checkpoint` (a step directory) on `split` of `config.data` and
    returns the metrics (segmentation: mIoU etc., with the IoU table logged; video: clip and
    multi-view accuracy). Needs dnl_jax.models and dnl_jax.train (registry, checkpoint reader).
    Each host evaluates examples process_index::process_count; confusions (video: counts) are
    summed."""
    from dnl_jax.data import load_split
    from dnl_jax.data.pipeline import video_view_settings
    from dnl_jax.train.parallel import sum_over_hosts

    predict, bundle = _predict_fn(config, checkpoint)
    source = load_split(config.data.name, split, config.data.data_dir, with_names=True)
    process, processes = jax.process_index(), jax.process_count()
    examples = (source[i] for i in range(process, len(source), processes))
    if bundle.task != "segmentation":
        return video_accuracies(sum_over_hosts(
            video_view_counts(predict, examples, **video_view_settings(config))))
    confusion = evaluate_segmentation(
        predict, examples, num_classes=bundle.num_classes,
        base_size=tuple(config.data.base_size), output_dir=output_dir,
        dataset=config.data.name, **inference_settings(config))
    metrics = segmentation_metrics(sum_over_hosts(confusion))
    log(format_iou_table(metrics, source.classes))
    return metrics


def main(argv: Sequence[str]) -> None:
    import json

    from absl import flags

    split = flags.FLAGS.split
    metrics = evaluate_checkpoint(_CONFIG.value, flags.FLAGS.checkpoint, split,
                                  output_dir=flags.FLAGS.output_dir)
    if "clip_accuracy" in metrics:
        print(f"clip accuracy {100 * metrics['clip_accuracy']:.2f}  "
              f"video (multi-view) accuracy {100 * metrics['video_accuracy']:.2f}")
    if flags.FLAGS.output_dir:
        with open(os.path.join(flags.FLAGS.output_dir, f"metrics_{split}.json"), "w") as f:
            json.dump({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                       for k, v in metrics.items()}, f, indent=1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.")
    flags.DEFINE_string("checkpoint", None,
                        "Checkpoint step directory, e.g. runs/x/checkpoints/80000.")
    flags.DEFINE_string("split", "val", "Split of config.data to evaluate.")
    flags.DEFINE_string("output_dir", None, "Writes prediction PNGs and metrics_SPLIT.json here.")
    flags.mark_flags_as_required(["config", "checkpoint"])
    app.run(main)
