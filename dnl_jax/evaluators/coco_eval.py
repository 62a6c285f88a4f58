"""COCO box / mask AP through pycocotools' `COCOeval`, and the standard results JSON.

The core of the detection evaluator (`dnl_jax/evaluators/coco.py`, `type='coco'`): ground truth
and predictions as NumPy arrays in, COCO dicts and AP out.

    ground truth   per image: id, height, width, boxes `[n, 4]` (x1, y1, x2, y2), labels `[n]`
                   (0..K−1), masks `[n, H, W]` (optional), iscrowd `[n]` (optional)
    predictions    per image: boxes `[D, 4]`, scores `[D]`, labels `[D]`, masks `[D, H, W]`
                   (binary, optional)
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dnl_jax.models.detection import proposals

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
IOU_TYPES = ("bbox", "segm")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def encode_mask(mask: np.ndarray) -> dict:
    """Binary `[H, W]` → COCO RLE with a JSON-safe (str) `counts`."""
    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth_dataset(images: Iterable[dict], category_ids: Sequence[int]) -> dict:
    """COCO-format dataset dict from per-image ground truth (see module docstring); label k
    becomes category `category_ids[k]`. Boxes with zero width or height are kept (COCOeval
    counts them as misses, as the reference keeps what the annotation says)."""
    annotations, image_entries = [], []
    for image in images:
        image_entries.append(
            {"id": int(image["id"]), "height": int(image["height"]), "width": int(image["width"])}
        )
        boxes = _xywh(image["boxes"])
        masks = image.get("masks")
        crowd = image.get("iscrowd", np.zeros(len(boxes), bool))
        for index, (box, label) in enumerate(zip(boxes, image["labels"], strict=False)):
            entry = {
                "id": len(annotations) + 1,
                "image_id": int(image["id"]),
                "category_id": int(category_ids[int(label)]),
                "bbox": box.tolist(),
                "iscrowd": int(crowd[index]),
                "area": float(box[2] * box[3]),
            }
            if masks is not None:
                entry["segmentation"] = encode_mask(masks[index])
                entry["area"] = float(np.asarray(masks[index], bool).sum())
            annotations.append(entry)
    return {
        "images": image_entries,
        "annotations": annotations,
        "categories": [{"id": int(c), "name": str(c)} for c in category_ids],
    }


def detection_results(
    image_id: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    category_ids: Sequence[int],
    masks: np.ndarray | None = None,
) -> list[dict]:
    """One image's detections as COCO results entries (bbox in x, y, w, h; RLE masks)."""
    results = []
    for index, (box, score, label) in enumerate(zip(_xywh(boxes), scores, labels, strict=False)):
        entry = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label)]),
            "bbox": [round(float(v), 3) for v in box],
            "score": float(score),
        }
        if masks is not None:
            entry["segmentation"] = encode_mask(masks[index])
        results.append(entry)
    return results


def model_results(
    outputs: dict,
    image_ids: Sequence[int],
    image_sizes: np.ndarray,
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """`MaskRCNN` predictions for a batch (`boxes` `[B, D, 4]`, `scores`, `labels`, `valid`
    `[B, D]`, `masks` `[B, D, M, M]` probabilities) → COCO results entries, the masks pasted
    into each image's valid (height, width) and binarised at `mask_threshold` (mmdet's
    mask_thr_binary 0.5)."""
    outputs = {k: np.asarray(v) for k, v in outputs.items()}
    results = []
    for b, image_id in enumerate(image_ids):
        keep = outputs["valid"][b]
        height, width = (int(v) for v in np.asarray(image_sizes)[b])
        boxes = outputs["boxes"][b][keep]
        masks = None
        if "masks" in outputs:
            pasted = proposals.paste_masks(outputs["masks"][b][keep], boxes, height, width)
            masks = np.asarray(pasted) >= mask_threshold
        results += detection_results(
            image_id,
            boxes,
            outputs["scores"][b][keep],
            outputs["labels"][b][keep],
            category_ids,
            masks,
        )
    return results


def write_results(results: list[dict], path: str) -> None:
    """The standard COCO results JSON (a list of detections)."""
    with open(path, "w") as f:
        json.dump(results, f)


def evaluate(
    dataset: dict, results: list[dict], iou_types: Sequence[str] = IOU_TYPES
) -> tuple[dict[str, float], str]:
    """COCOeval for each IoU type → ({'bbox_AP': …, 'segm_AP50': …, …}, COCOeval's printed
    summary). No detections at all gives AP 0 (COCO cannot load an empty result list)."""
    unknown = set(iou_types) - set(IOU_TYPES)
    if unknown:
        raise ValueError(f"unknown IoU types {sorted(unknown)}; choose from {IOU_TYPES}.")
    if iou_types and "segm" in iou_types and results and "segmentation" not in results[0]:
        raise ValueError(
            "segm AP needs 'segmentation' in the results; pass masks to "
            "detection_results or evaluate with iou_types=('bbox',)."
        )
    metrics, summary = {}, io.StringIO()
    with contextlib.redirect_stdout(summary):
        ground_truth = COCO()
        ground_truth.dataset = dataset
        ground_truth.createIndex()
        for iou_type in iou_types:
            if not results:
                metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
                print(f"{iou_type}: no detections, AP 0")
                continue
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            metrics.update(
                {
                    f"{iou_type}_{name}": float(value)
                    for name, value in zip(STAT_NAMES, evaluator.stats, strict=False)
                }
            )
    return metrics, summary.getvalue()


__all__ = [
    "ground_truth_dataset",
    "detection_results",
    "model_results",
    "write_results",
    "evaluate",
    "encode_mask",
    "STAT_NAMES",
]
