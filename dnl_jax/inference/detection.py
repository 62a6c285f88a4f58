"""Detection on the user's images: the detector's boxes, masks and class names above a score
threshold, drawn on the image and written as COCO results JSON.

The image goes the evaluator's way (`detection_transforms.detection_eval_preprocess`: keep-ratio
resize to the record's `base_size`, normalise, pad to its `canvas`); the detections come back to
the original pixels (boxes divided by the scale factor, masks pasted at the original size,
`coco_eval.model_results`, as the COCO evaluator does).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from dnl_jax.data import detection_transforms
from dnl_jax.evaluators import coco_eval
from dnl_jax.inference import files


@dataclasses.dataclass
class DetectionResult:
    """image uint8 `[H, W, 3]`; per kept detection (score >= threshold): boxes float32 `[D, 4]`
    (x1, y1, x2, y2, original pixels), scores `[D]`, labels int `[D]` (class indices), masks
    bool `[D, H, W]`; coco: the COCO results entries (category ids: the record's label_ids)."""

    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    coco: list


def make_detect_fn(module, variables):
    apply = jax.jit(lambda v, image, size: module.apply(v, image, size, train=False))
    return lambda images, sizes: apply(variables, images, sizes)


def model_input(record, image: np.ndarray, image_id: int = 0) -> dict:
    """The evaluator's input of one uint8 image: {'image' `[Hc, Wc, 3]` (the canvas),
    'image_size', 'scale_factor' (h, w), 'orig_size', 'image_id'}."""
    resize = record.resize
    return detection_transforms.detection_eval_preprocess(
        {"image": image, "image_id": image_id},
        scale=tuple(resize["base_size"]),
        canvas=tuple(resize["canvas"]),
        mean=record.mean,
        std=record.std,
    )


def canvas_display(record, example: dict) -> np.ndarray:
    """uint8 `[Hc, Wc, 3]`: `model_input`'s canvas as the detector sees it (the resized image,
    black padding)."""
    shown = example["image"] * np.asarray(record.std, np.float32) + np.asarray(record.mean)
    height, width = (int(v) for v in example["image_size"])
    shown[height:], shown[:, width:] = 0.0, 0.0
    return np.clip(np.round(shown), 0, 255).astype(np.uint8)


def detect(detect_fn, record, image: np.ndarray, *, score_threshold: float, image_id: int = 0):
    """`DetectionResult` of one uint8 image."""
    example = model_input(record, image, image_id)
    outputs = detect_fn(example["image"][None], example["image_size"][None])
    outputs = detection_transforms.outputs_to_original(
        {key: np.asarray(value) for key, value in outputs.items()}, example["scale_factor"][None]
    )
    outputs["valid"] = outputs["valid"] & (outputs["scores"] >= score_threshold)
    category_ids = list(record.label_ids)
    sizes = np.asarray([image.shape[:2]])
    entries = coco_eval.model_results(outputs, [image_id], sizes, category_ids)
    keep = outputs["valid"][0]
    masks = (
        np.stack([mask_utils.decode(entry["segmentation"]).astype(bool) for entry in entries])
        if entries
        else np.zeros((0, *image.shape[:2]), bool)
    )
    return DetectionResult(
        image,
        np.asarray(outputs["boxes"][0][keep], np.float32),
        np.asarray(outputs["scores"][0][keep], np.float32),
        np.asarray(outputs["labels"][0][keep], np.int64),
        masks,
        entries,
    )


def draw_detections(result: DetectionResult, class_names, palette) -> np.ndarray:
    """uint8 `[H, W, 3]`: masks blended in their class colours, boxes, 'name score' labels."""
    shown = result.image.astype(np.float32)
    for mask, label in zip(result.masks, result.labels, strict=True):
        tint = np.asarray(palette[int(label)], np.float32)
        shown[mask] = 0.5 * shown[mask] + 0.5 * tint
    canvas = Image.fromarray(np.round(shown).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for box, score, label in zip(result.boxes, result.scores, result.labels, strict=True):
        colour = tuple(int(c) for c in palette[int(label)])
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
        draw.text(
            (float(box[0]) + 2, float(box[1]) + 1),
            f"{class_names[label]} {score:.2f}",
            fill=(255, 255, 255),
        )
    return np.asarray(canvas)


def write_detections(result, stem: str, output_dir: str, record) -> list[str]:
    """NAME_detections.png and NAME_detections.json (COCO results entries, with the class names
    under 'categories'). Returns the paths."""
    import json
    import os

    class_names, label_ids = record.class_names, record.label_ids
    drawn = draw_detections(result, class_names, record.palette)
    payload = {
        "categories": [{"id": i, "name": n} for i, n in zip(label_ids, class_names, strict=True)],
        "annotations": result.coco,
    }
    return [
        files.save_png(os.path.join(output_dir, f"{stem}_detections.png"), drawn),
        files.write_atomic(
            os.path.join(output_dir, f"{stem}_detections.json"),
            json.dumps(payload, indent=1).encode("utf-8"),
        ),
    ]


__all__ = [
    "DetectionResult",
    "detect",
    "model_input",
    "canvas_display",
    "make_detect_fn",
    "draw_detections",
    "write_detections",
]
