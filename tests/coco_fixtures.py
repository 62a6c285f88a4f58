"""A tiny COCO 2017 in the real layout (train2017/, val2017/, annotations/instances_*.json),
written by the tests: polygons (one instance in two parts), compressed RLE, crowd instances in
uncompressed RLE, images without annotations, malformed polygons, a degenerate box, a small
image, and non-contiguous category ids listed out of order."""

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

CATEGORIES = [
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]
CATEGORY_IDS = [1, 3, 90]  # sorted: label k is CATEGORY_IDS[k]
# (image id, height, width) per split; ids deliberately not in file-listing order.
IMAGES = {
    "train": [(9, 40, 56), (3, 56, 40), (25, 40, 56), (30, 24, 30)],
    "val": [(12, 40, 56), (7, 40, 56)],
}
MALFORMED_PART_ID, ALL_MALFORMED_ID, DEGENERATE_ID = 102, 105, 106


def file_name(image_id):
    return f"{image_id:012d}.jpg"


def uncompressed_rle(mask):
    """Binary `[H, W]` → COCO's uncompressed RLE (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def _rect(x1, y1, x2, y2):
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def _polygon_annotation(ann_id, image_id, category, parts, height, width, *, bbox=None):
    valid = [p for p in parts if len(p) % 2 == 0 and len(p) >= 6]
    if bbox is None:
        xs = np.concatenate([p[0::2] for p in valid])
        ys = np.concatenate([p[1::2] for p in valid])
        bbox = [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min()),
            float(ys.max() - ys.min()),
        ]
    area = (
        float(mask_util.area(mask_util.merge(mask_util.frPyObjects(valid, height, width))))
        if valid
        else 0.0
    )
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": parts,
        "area": area,
        "bbox": bbox,
        "iscrowd": 0,
    }


def _mask_annotation(ann_id, image_id, category, mask, *, crowd):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    segmentation = (
        uncompressed_rle(mask)
        if crowd
        else {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}
    )
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "area": float(mask_util.area(rle)),
        "bbox": mask_util.toBbox(rle).tolist(),
        "iscrowd": int(crowd),
    }


def _ellipse(height, width, cy, cx, ry, rx):
    yy, xx = np.mgrid[:height, :width]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def _annotations():
    train = [
        _polygon_annotation(101, 9, 1, [_rect(4, 4, 20, 16)], 40, 56),
        # Two valid parts (a triangle and a rectangle) and a 2-point part mmdet drops.
        _polygon_annotation(
            MALFORMED_PART_ID,
            9,
            90,
            [[30, 5, 50, 5, 40, 15], _rect(30, 20, 44, 30), [1, 1, 5, 5]],
            40,
            56,
        ),
        _mask_annotation(103, 9, 3, _ellipse(40, 56, 30, 12, 6, 9), crowd=False),
        _mask_annotation(104, 9, 1, _ellipse(40, 56, 20, 45, 12, 8), crowd=True),
        _polygon_annotation(
            ALL_MALFORMED_ID, 3, 3, [[2, 2, 10, 2, 10]], 56, 40, bbox=[2.0, 2.0, 8.0, 8.0]
        ),
        _polygon_annotation(
            DEGENERATE_ID,
            3,
            1,
            [[10, 10, 10.5, 10, 10.5, 20, 10, 20]],
            56,
            40,
            bbox=[10.0, 10.0, 0.5, 10.0],
        ),
        _polygon_annotation(107, 3, 3, [_rect(2, 30, 14, 50)], 56, 40),
        _polygon_annotation(108, 3, 1, [_rect(20, 4, 36, 24)], 56, 40),
        _polygon_annotation(109, 3, 90, [[22, 30, 38, 34, 26, 52]], 56, 40),
        _polygon_annotation(110, 30, 3, [_rect(3, 3, 20, 15)], 24, 30),
    ]
    val = [
        _polygon_annotation(201, 7, 3, [_rect(6, 8, 30, 28)], 40, 56),
        _polygon_annotation(202, 7, 90, [[34, 4, 52, 10, 40, 30]], 40, 56),
        _mask_annotation(203, 7, 1, _ellipse(40, 56, 32, 40, 6, 10), crowd=True),
    ]
    return {"train": train, "val": val}


def write_coco(raw, rng):
    """Writes the tiny COCO under `raw`; returns {split: instances JSON path}."""
    paths = {}
    annotations = _annotations()
    os.makedirs(os.path.join(raw, "annotations"), exist_ok=True)
    for split, images in IMAGES.items():
        folder = os.path.join(raw, f"{split}2017")
        os.makedirs(folder, exist_ok=True)
        entries = []
        for image_id, height, width in images:
            yy, xx = np.mgrid[:height, :width]
            smooth = np.stack([4 * yy, 4 * xx, 2 * (xx + yy)], -1) + rng.integers(0, 40, 3)
            Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, file_name(image_id)), quality=95
            )
            entries.append(
                {
                    "id": image_id,
                    "file_name": file_name(image_id),
                    "height": height,
                    "width": width,
                    "license": 1,
                }
            )
        dataset = {
            "info": {"description": "tiny COCO fixture"},
            "licenses": [],
            "images": entries,
            "annotations": annotations[split],
            "categories": CATEGORIES,
        }
        paths[split] = os.path.join(raw, "annotations", f"instances_{split}2017.json")
        with open(paths[split], "w") as f:
            json.dump(dataset, f)
    return paths
