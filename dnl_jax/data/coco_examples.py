"""Reading prepared COCO records (coco.py prepares them): records → detection examples, the
ground truth that pycocotools' COCOeval scores predictions against, and mmdet's training subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_IMAGE_SIZE = 32  # mmdet's filter_cfg min_size for the COCO training set


def pycocotools_mask():
    """pycocotools.mask, or an ImportError that says how to install it."""
    try:
        from pycocotools import mask
    except ImportError as error:
        raise ImportError("COCO masks need pycocotools: pip install -e '.[data]'") from error
    return mask


def decode_masks(counts: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """Compressed RLE counts → uint8 `[n, height, width]` masks."""
    if len(counts) == 0:
        return np.zeros((0, height, width), np.uint8)
    rles = [{"size": [height, width], "counts": bytes(c)} for c in counts]
    return np.ascontiguousarray(np.moveaxis(pycocotools_mask().decode(rles), -1, 0))


def decode_record(record: dict) -> dict[str, Any]:
    """A prepared record (tfds-decoded) → the example `load_split('coco', ...)` gives:

    image uint8 [H, W, 3], image_id int32, height / width int32, boxes f32 [n, 4] (x1, y1, x2, y2),
    labels int32 [n] (0..K-1), category_ids int32 [n], iscrowd bool [n], areas f32 [n] (the
    JSON's), masks uint8 [n, H, W].
    """
    height, width = int(record["height"]), int(record["width"])
    return {
        "image": record["image"],
        "image_id": np.int32(record["image_id"]),
        "height": np.int32(height),
        "width": np.int32(width),
        "boxes": np.asarray(record["boxes"], np.float32).reshape(-1, 4),
        "labels": np.asarray(record["labels"], np.int32),
        "category_ids": np.asarray(record["category_ids"], np.int32),
        "iscrowd": np.asarray(record["iscrowd"], np.bool_),
        "areas": np.asarray(record["areas"], np.float32),
        "masks": decode_masks(list(record["mask_counts"]), height, width),
    }


def category_ids(source) -> list[int]:
    """The prepared dataset's label → category id list (label k is category_ids[k])."""
    return [int(c) for c in source.metadata["category_ids"]]


def coco_ground_truth(source) -> tuple[dict, list[int]]:
    """(COCO-format dataset dict of the split at the original image sizes, category_ids).

    Feed the dict to `dnl_jax.evaluators.coco_eval.evaluate`; predictions whose label is k
    become category `category_ids[k]` (pass the list to `coco_eval.model_results`). Annotations
    keep their ids, original category ids, area and RLE (images are not decoded). It equals the
    official instances JSON but for the annotations skipped for malformed polygons (listed in
    `source.metadata['splits'][split]`).
    """
    ids = category_ids(source)
    names = list(source.classes)
    images, annotations = [], []
    raw = source.raw_records(skip_decoding=("image",))
    for index in range(len(source)):
        record = raw[index]
        image_id, height, width = (int(record[k]) for k in ("image_id", "height", "width"))
        images.append(
            {
                "id": image_id,
                "height": height,
                "width": width,
                "file_name": record["name"].decode() + ".jpg",
            }
        )
        boxes = np.asarray(record["boxes"], np.float64).reshape(-1, 4)
        for i, counts in enumerate(record["mask_counts"]):
            x1, y1, x2, y2 = boxes[i].tolist()
            annotations.append(
                {
                    "id": int(record["annotation_ids"][i]),
                    "image_id": image_id,
                    "category_id": int(record["category_ids"][i]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(record["areas"][i]),
                    "iscrowd": int(record["iscrowd"][i]),
                    "segmentation": {
                        "size": [height, width],
                        "counts": bytes(counts).decode("ascii"),
                    },
                }
            )
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(ids, names, strict=False)],
    }
    return dataset, ids


def train_indices(
    source, *, filter_empty_gt: bool = True, min_size: int = MIN_IMAGE_SIZE
) -> np.ndarray:
    """Indices of the examples mmdet's COCO training set keeps: with `filter_empty_gt`, not the
    images without annotations; with `min_size` (only 0 or the prepared `MIN_IMAGE_SIZE`), not
    the images whose shorter side is below it. `sources.Subset(source, train_indices(source))`
    is that training set as a source."""
    stats = source.metadata["splits"][source.split]
    if min_size not in (0, source.metadata["min_image_size"]):
        raise ValueError(
            f"min_size={min_size}: the preparation listed small images for "
            f"min_size={source.metadata['min_image_size']} only (or pass 0)."
        )
    dropped = set(stats["indices_without_annotations"]) if filter_empty_gt else set()
    if min_size:
        dropped |= set(stats["small_image_indices"])
    return np.array([i for i in range(len(source)) if i not in dropped], np.int64)


__all__ = [
    "MIN_IMAGE_SIZE",
    "category_ids",
    "coco_ground_truth",
    "decode_masks",
    "decode_record",
    "pycocotools_mask",
    "train_indices",
]
