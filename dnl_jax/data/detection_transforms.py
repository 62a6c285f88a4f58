"""mmdet's Mask R-CNN (COCO 1x) pipelines in NumPy: examples of a detection source
(`load_split('coco', ...)`, see coco.py) → the fixed-shape examples the detection trainer batches.

Training (mmdet's train_pipeline LoadAnnotations → Resize(scale=(1333, 800), keep_ratio=True) →
RandomFlip(0.5) → PackDetInputs, then its data preprocessor's normalise and pad):
  1. gt: crowd annotations are left out (mmdet marks them ignored: they give no target), and so
     are those mmdet's CocoDataset drops when it loads the annotations (degenerate: area <= 0,
     width or height < 1 px, or no overlap with the image);
  2. resize, aspect kept: factor min(1333 / long side, 800 / short side), size int(x·f + 0.5)
     (`transforms.rescale_size`); image bilinear (PIL), masks nearest (pixel centres); boxes
     scaled by (new w / w, new h / h) and clipped to the image (mmdet's clip_object_border);
     boxes under 1 px wide or high after that are dropped too (degenerate);
  3. horizontal flip with probability 0.5: image, masks, and boxes x1' = W − x2, x2' = W − x1;
  4. the first `max_instances` instances (annotation order) are kept, the rest truncated;
  5. normalise with mmdet's RGB mean / std and pad bottom / right with zeros to `canvas`.
The canvas is fixed so that jit sees one shape: the default (1344, 1344) holds any resized COCO
image, 1333 rounded up to a multiple of 32 both ways since portrait images are 1333 high
(mmdet pads each batch to a multiple of 32 instead). What steps 1, 2 and 4 leave out is counted
by an `InstanceCounter` (logged every `log_every` images; each grain worker process counts its
own examples).

Output (the detection example format; G = max_instances slots, canvas Hc × Wc):
    image f32 [Hc, Wc, 3]         image_size f32 [2] (h, w after resizing, before padding)
    image_id i32 []               gt_boxes f32 [G, 4] (x1, y1, x2, y2, resized pixels)
    gt_labels i32 [G] (0..K-1)    gt_masks u8 [G, Hc, Wc]       gt_valid bool [G]
Invalid slots are zero. At the defaults gt_masks is 100 × 1344 × 1344 bytes (181 MB) per image;
with `mask_crop_size` S the masks come as `gt_mask_crops` u8 [G, S, S] instead, each resampled
inside its box (`box_mask_crops`; S = 56: 314 KB per image), from which the detector makes the
same mask targets up to that resolution (`targets.mask_targets_from_crops`).

Evaluation (mmdet's test_pipeline): the same resize (no flip), normalise and pad →
{'image', 'image_size', 'scale_factor' f32 [2] (resized / original, h and w), 'orig_size' i32 [2]
(h, w), 'image_id'}. The model predicts in resized pixels: `outputs_to_original` divides the
boxes by the scale factor, then `coco_eval.model_results(outputs, image_ids, orig_size,
category_ids)` pastes the masks at the original size (mmdet's rescale=True).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from dnl_jax.data import transforms

TRAIN_SCALE = (1333, 800)  # mmdet Resize scale (long, short)
CANVAS = (1344, 1344)
MAX_INSTANCES = 100
MEAN = transforms.IMAGENET_MEAN  # mmdet's data_preprocessor mean / std (RGB, 0-255)
STD = transforms.IMAGENET_STD
_log = logging.getLogger(__name__)


class InstanceCounter:
    """Counts the training instances the pipeline leaves out; logs the totals (INFO) every
    `log_every` images and whenever `log()` is called."""

    KINDS = ("crowd", "degenerate", "truncated")

    def __init__(self, log_every: int = 1000):
        self.log_every = log_every
        self.images = 0
        self.kept = 0
        self.counts = dict.fromkeys(self.KINDS, 0)

    def add(self, kept: int, **counts: int) -> None:
        self.images += 1
        self.kept += kept
        for kind, count in counts.items():
            self.counts[kind] += count
        if self.log_every and self.images % self.log_every == 0:
            self.log()

    def totals(self) -> dict[str, int]:
        return {"images": self.images, "kept": self.kept, **self.counts}

    def log(self) -> None:
        _log.info(
            "detection gt over %d images: %d instances kept; left out %d crowd, %d "
            "degenerate (< 1 px or zero area), %d beyond max_instances",
            self.images,
            self.kept,
            self.counts["crowd"],
            self.counts["degenerate"],
            self.counts["truncated"],
        )


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 `[n, h, w]` → `[n, *size]`, nearest (each output pixel centre's source pixel)."""
    (height, width), (new_h, new_w) = masks.shape[1:], size
    rows = np.minimum(((np.arange(new_h) + 0.5) * height / new_h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(new_w) + 0.5) * width / new_w).astype(np.int64), width - 1)
    return masks[:, rows[:, None], cols[None, :]]


def _loadable(example: dict[str, Any]) -> np.ndarray:
    """Instances mmdet's CocoDataset keeps when loading: some area, w and h >= 1 px, overlapping
    the image."""
    boxes = np.asarray(example["boxes"], np.float64).reshape(-1, 4)
    height, width = np.asarray(example["image"]).shape[:2]
    inter_w = np.minimum(boxes[:, 2], width) - np.maximum(boxes[:, 0], 0)
    inter_h = np.minimum(boxes[:, 3], height) - np.maximum(boxes[:, 1], 0)
    sizes = boxes[:, 2:] - boxes[:, :2]
    areas = np.asarray(example.get("areas", sizes.prod(-1)), np.float64)
    return (
        (np.maximum(inter_w, 0) * np.maximum(inter_h, 0) > 0) & (areas > 0) & (sizes >= 1).all(-1)
    )


def _resize_image(example: dict[str, Any], scale: Sequence[int], canvas: Sequence[int]):
    image = np.asarray(example["image"])
    size = transforms.rescale_size(*image.shape[:2], scale)
    if size[0] > canvas[0] or size[1] > canvas[1]:
        raise ValueError(
            f"image {example.get('image_id', '')} resized to {size} is larger than "
            f"the canvas {tuple(canvas)}; pass a canvas of at least "
            f"({max(scale)}, {max(scale)}) rounded up to a multiple of 32 for "
            f"scale {tuple(scale)}."
        )
    resized, _ = transforms.resize(image, None, size)
    factor = np.array([size[0] / image.shape[0], size[1] / image.shape[1]], np.float32)
    return resized, size, factor


def _pad_image(image: np.ndarray, canvas: Sequence[int], mean, std) -> np.ndarray:
    return transforms.pad_to(transforms.normalize(image, mean, std), None, canvas)[0]


def detection_train_augment(
    example: dict[str, Any],
    rng: np.random.Generator,
    *,
    scale: Sequence[int] = TRAIN_SCALE,
    canvas: Sequence[int] = CANVAS,
    max_instances: int = MAX_INSTANCES,
    flip_prob: float = 0.5,
    mean=MEAN,
    std=STD,
    counter: InstanceCounter | None = None,
    mask_crop_size: int = 0,
) -> dict[str, np.ndarray]:
    """A detection source's example → the training example (module docstring), mmdet's
    train_pipeline. `counter` (optional) counts what is left out. `mask_crop_size` S > 0 gives
    `gt_mask_crops` u8 [G, S, S] (each mask resampled inside its box, `box_mask_crops`) instead
    of the full-canvas `gt_masks`."""
    crowd = np.asarray(example["iscrowd"], bool)
    loadable = _loadable(example)
    image, size, factor = _resize_image(example, scale, canvas)
    boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4) * np.tile(factor[::-1], 2)
    boxes = np.clip(boxes, 0, np.array([size[1], size[0]] * 2, np.float32))
    keep = ~crowd & loadable & ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(-1)
    chosen = np.flatnonzero(keep)
    truncated = max(len(chosen) - max_instances, 0)
    chosen = chosen[:max_instances]
    if counter is not None:
        counter.add(
            len(chosen),
            crowd=int(crowd.sum()),
            degenerate=int((~crowd & ~keep).sum()),
            truncated=truncated,
        )
    boxes = boxes[chosen]
    masks = _resize_masks(np.asarray(example["masks"], np.uint8)[chosen], size)
    if rng.random() < flip_prob:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
        boxes = np.stack(
            [size[1] - boxes[:, 2], boxes[:, 1], size[1] - boxes[:, 0], boxes[:, 3]], axis=-1
        )
    count = len(chosen)
    gt_boxes = np.zeros((max_instances, 4), np.float32)
    gt_labels = np.zeros(max_instances, np.int32)
    gt_boxes[:count] = boxes
    gt_labels[:count] = np.asarray(example["labels"], np.int32)[chosen]
    out = {
        "image": _pad_image(np.ascontiguousarray(image), canvas, mean, std),
        "image_size": np.array(size, np.float32),
        "image_id": np.int32(example["image_id"]),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_valid": np.arange(max_instances) < count,
    }
    if mask_crop_size:
        out["gt_mask_crops"] = np.zeros((max_instances, mask_crop_size, mask_crop_size), np.uint8)
        out["gt_mask_crops"][:count] = box_mask_crops(masks, boxes, mask_crop_size)
    else:
        out["gt_masks"] = np.zeros((max_instances, *canvas), np.uint8)
        out["gt_masks"][:count, : size[0], : size[1]] = masks
    return out


def box_mask_crops(masks: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Masks u8 `[n, h, w]` and their boxes `[n, 4]` (x1, y1, x2, y2) → u8 `[n, size, size]`:
    crop pixel (i, j) is the mask's pixel under the box point (x1 + (j + ½)·w / size,
    y1 + (i + ½)·h / size) (nearest), the layout `targets.mask_targets_from_crops` reads."""
    crops = np.zeros((len(masks), size, size), np.uint8)
    if not len(masks):
        return crops
    height, width = masks.shape[1:]
    steps = (np.arange(size) + 0.5) / size
    for index, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        rows = np.clip(np.floor(y1 + steps * (y2 - y1)).astype(np.int64), 0, height - 1)
        cols = np.clip(np.floor(x1 + steps * (x2 - x1)).astype(np.int64), 0, width - 1)
        crops[index] = masks[index][rows[:, None], cols[None, :]]
    return crops


def detection_eval_preprocess(
    example: dict[str, Any],
    *,
    scale: Sequence[int] = TRAIN_SCALE,
    canvas: Sequence[int] = CANVAS,
    mean=MEAN,
    std=STD,
) -> dict[str, np.ndarray]:
    """A detection source's example → the evaluation input (module docstring)."""
    image, size, factor = _resize_image(example, scale, canvas)
    return {
        "image": _pad_image(image, canvas, mean, std),
        "image_size": np.array(size, np.float32),
        "scale_factor": factor,
        "orig_size": np.array(np.asarray(example["image"]).shape[:2], np.int32),
        "image_id": np.int32(example["image_id"]),
    }


def outputs_to_original(outputs: dict[str, Any], scale_factor: np.ndarray) -> dict[str, Any]:
    """Model predictions for a batch (`boxes` `[B, D, 4]` in resized pixels) with the boxes in
    original pixels (divided by `scale_factor` `[B, 2]`, h and w); other entries unchanged."""
    factor = np.asarray(scale_factor, np.float32)[:, None, [1, 0, 1, 0]]
    return {**outputs, "boxes": np.asarray(outputs["boxes"], np.float32) / factor}


class DetectionTrainTransform(grain.transforms.RandomMap):
    """grain RandomMap wrapper of `detection_train_augment` (kwargs as there); `counter` is an
    `InstanceCounter` made here unless given."""

    def __init__(self, counter: InstanceCounter | None = None, **kwargs):
        self.counter = counter or InstanceCounter()
        self.kwargs = kwargs

    def random_map(self, element, rng: np.random.Generator):
        return detection_train_augment(element, rng, counter=self.counter, **self.kwargs)


class DetectionEvalTransform(grain.transforms.Map):
    """grain Map wrapper of `detection_eval_preprocess` (kwargs as there)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def map(self, element):
        return detection_eval_preprocess(element, **self.kwargs)


__all__ = [
    "TRAIN_SCALE",
    "CANVAS",
    "MAX_INSTANCES",
    "InstanceCounter",
    "detection_train_augment",
    "detection_eval_preprocess",
    "outputs_to_original",
    "DetectionTrainTransform",
    "DetectionEvalTransform",
]
