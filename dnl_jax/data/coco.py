"""COCO 2017 instance segmentation: the official files → prepared records → detection examples,
and the ground truth that pycocotools' COCOeval scores predictions against.

Raw input (`manual_dir`), the official downloads extracted side by side:

    train2017/*.jpg                          train2017.zip
    val2017/*.jpg                            val2017.zip
    annotations/instances_train2017.json     annotations_trainval2017.zip
    annotations/instances_val2017.json

Record (one per image listed in the split's JSON, sorted by image id; 'name' = the file's stem):
the encoded image (the JPEG as it is; a grey or CMYK one as the PNG of its RGB conversion),
image_id, height, width, and per annotation, in the JSON's order: box (COCO x, y, w, h → x1, y1,
x2, y2 in pixels, float64), contiguous label, category id, iscrowd, area (the JSON's, for
COCOeval's size ranges), annotation id, and the mask as compressed COCO RLE made with pycocotools
(from polygons, from uncompressed RLE — crowd annotations — or kept when already compressed).

Labels: the JSON's category ids sorted ascending; label k is the k-th (`category_ids[k]`, in the
prepared metadata.json with the class names, and 'coco2017_categories' says whether they are
COCO 2017's 80, `COCO_CATEGORY_IDS`). Both splits must list the same categories.

Images without annotations are kept (val: COCOeval counts their false positives; train: negative
images). mmdet's COCO training set drops them (`filter_empty_gt=True`) with images whose shorter
side is below 32 (`min_size=32`): `sources.Subset(source, train_indices(source))` is that
filtered set (from lists the preparation stores in metadata.json).

Reading (coco_examples.py, its names also importable from here): `load_split('coco', split,
data_dir)` gives `decode_record`'s examples; the pipelines are in detection_transforms.py;
`coco_ground_truth(source)` is what COCOeval scores against.

Malformed polygons (odd length or fewer than 3 points) are dropped from their annotation, as
mmdet's LoadAnnotations does; an annotation left without a valid polygon is skipped. Both are
counted in metadata.json with their annotation ids, logged, and printed by `prepare`.
Any other inconsistency (an annotation of an unlisted category or image, an RLE of the wrong size,
an image whose size differs from the JSON's, a missing image file) is a ValueError naming it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dnl_jax.data import records

# Reading the prepared records lives in coco_examples.py; its names stay importable from here.
from dnl_jax.data.coco_examples import (
    MIN_IMAGE_SIZE,
    category_ids,
    coco_ground_truth,
    decode_masks,
    decode_record,
    pycocotools_mask,
    train_indices,
)

SPLIT_DIRS = {"train": "train2017", "val": "val2017"}
ANNOTATIONS_DIR = "annotations"
# fmt: off
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
# fmt: on
_LISTED = 100  # annotation ids listed per kind in metadata.json (all are counted)
_log = logging.getLogger(__name__)


def annotation_path(manual_dir: str, split: str) -> str:
    """Where the split's instances JSON must be."""
    return os.path.join(manual_dir, ANNOTATIONS_DIR, f"instances_{SPLIT_DIRS[split]}.json")


class ParseReport:
    """Per split: what the parser dropped or noted (→ the split's metadata.json entry)."""

    def __init__(self):
        self._stats: dict[str, dict[str, Any]] = {}

    def _split(self, split: str) -> dict[str, Any]:
        return self._stats.setdefault(
            split,
            {
                "num_annotations": 0,
                "num_crowd": 0,
                "malformed_polygons": 0,
                "malformed_polygon_annotation_ids": [],
                "skipped_annotations": 0,
                "skipped_annotation_ids": [],
                "indices_without_annotations": [],
                "small_image_indices": [],
            },
        )

    def annotations(self, split: str, count: int, crowd: int) -> None:
        stats = self._split(split)
        stats["num_annotations"] += count
        stats["num_crowd"] += crowd

    def malformed(self, split: str, annotation_id: int, parts: int, skipped: bool) -> None:
        stats = self._split(split)
        stats["malformed_polygons"] += parts
        _append(stats["malformed_polygon_annotation_ids"], annotation_id)
        if skipped:
            stats["skipped_annotations"] += 1
            _append(stats["skipped_annotation_ids"], annotation_id)
        _log.warning(
            "COCO %s annotation %d: %d malformed polygon(s) dropped (odd length or fewer "
            "than 3 points)%s",
            split,
            annotation_id,
            parts,
            "; no valid polygon left, annotation skipped" if skipped else "",
        )

    def image(self, split: str, index: int, num_annotations: int, height: int, width: int) -> None:
        stats = self._split(split)
        if num_annotations == 0:
            stats["indices_without_annotations"].append(index)
        if min(height, width) < MIN_IMAGE_SIZE:
            stats["small_image_indices"].append(index)

    def split_stats(self, split: str) -> dict[str, Any]:
        return dict(self._split(split))


def _append(listed: list, value: int) -> None:
    if len(listed) < _LISTED:
        listed.append(int(value))


def load_annotations(path: str) -> dict:
    """The instances JSON at `path` (ValueError naming it when it is missing or not COCO)."""
    records.require_file(path, "COCO annotation file")
    try:
        with open(path) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); extract it again from "
            "annotations_trainval2017.zip."
        ) from error
    missing = [key for key in ("images", "annotations", "categories") if key not in dataset]
    if missing:
        raise ValueError(f"{path} has no {missing}: not a COCO instances file.")
    return dataset


def categories(dataset: dict, path: str) -> tuple[list[int], list[str]]:
    """(category ids sorted ascending, their names): label k is category_ids[k]."""
    named = {int(c["id"]): str(c["name"]) for c in dataset["categories"]}
    if not named or len(named) != len(dataset["categories"]):
        raise ValueError(f"{path}: categories must be a non-empty list of distinct ids.")
    ids = sorted(named)
    return ids, [named[i] for i in ids]


def _rle_counts(
    annotation: dict, height: int, width: int, split: str, what: str, report: ParseReport
) -> bytes | None:
    """The annotation's mask as compressed RLE counts; None when no valid polygon is left."""
    mask_util = pycocotools_mask()
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        valid = [p for p in segmentation if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
        if len(valid) < len(segmentation) or not segmentation:
            report.malformed(
                split,
                int(annotation["id"]),
                max(1, len(segmentation) - len(valid)),
                skipped=not valid,
            )
        if not valid:
            return None
        return mask_util.merge(mask_util.frPyObjects(valid, height, width))["counts"]
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(v) for v in segmentation["size"]] != [height, width]:
            raise ValueError(
                f"{what}: RLE size {segmentation['size']} differs from the image's "
                f"{[height, width]}."
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed (crowd) RLE
            return mask_util.frPyObjects(segmentation, height, width)["counts"]
        return counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    raise ValueError(f"{what}: segmentation is neither polygons nor RLE ({type(segmentation)}).")


def _instances(
    annotations: list[dict],
    height: int,
    width: int,
    label_of: dict[int, int],
    split: str,
    path: str,
    report: ParseReport,
) -> dict[str, Any]:
    """The image's annotations as the record's per-instance arrays (see module docstring)."""
    rows = []
    for annotation in annotations:
        what = f"{path}: annotation {annotation['id']}"
        category = int(annotation["category_id"])
        if category not in label_of:
            raise ValueError(
                f"{what} has category_id {category}, which the file's categories do not list."
            )
        counts = _rle_counts(annotation, height, width, split, what, report)
        if counts is None:
            continue
        x, y, w, h = (float(v) for v in annotation["bbox"])
        rows.append(
            (
                [x, y, x + w, y + h],
                label_of[category],
                category,
                bool(annotation.get("iscrowd", 0)),
                float(annotation.get("area", w * h)),
                int(annotation["id"]),
                counts,
            )
        )
    columns = list(zip(*rows, strict=False)) if rows else [[]] * 7
    report.annotations(split, len(rows), int(sum(columns[3])))
    return {
        "boxes": np.asarray(columns[0], np.float64).reshape(-1, 4),
        "labels": np.asarray(columns[1], np.int32),
        "category_ids": np.asarray(columns[2], np.int32),
        "iscrowd": np.asarray(columns[3], np.bool_),
        "areas": np.asarray(columns[4], np.float64),
        "annotation_ids": np.asarray(columns[5], np.int64),
        "mask_counts": list(columns[6]),
    }


def _examples(
    manual_dir: str, split: str, dataset: dict, category_ids: list[int], report: ParseReport
) -> Iterator[dict]:
    path = annotation_path(manual_dir, split)
    label_of = {c: k for k, c in enumerate(category_ids)}
    by_image: dict[int, list[dict]] = {int(image["id"]): [] for image in dataset["images"]}
    for annotation in dataset["annotations"]:
        if int(annotation["image_id"]) not in by_image:
            raise ValueError(
                f"{path}: annotation {annotation['id']} refers to image "
                f"{annotation['image_id']}, which the file's images do not list."
            )
        by_image[int(annotation["image_id"])].append(annotation)
    image_dir = os.path.join(manual_dir, SPLIT_DIRS[split])
    for index, image in enumerate(sorted(dataset["images"], key=lambda i: int(i["id"]))):
        image_path = os.path.join(image_dir, image["file_name"])
        height, width = int(image["height"]), int(image["width"])
        with open(records.require_file(image_path, f"COCO {split} image"), "rb") as f:
            image_bytes = f.read()
        decoded, source_mode = records.decode_image(image_bytes, mode="RGB", what=image_path)
        if decoded.shape[:2] != (height, width):
            raise ValueError(
                f"{image_path} is {decoded.shape[0]}x{decoded.shape[1]} but {path} "
                f"says {height}x{width}; re-extract the image."
            )
        if source_mode != "RGB":
            image_bytes = records.encode_png(decoded)
        annotations = by_image[int(image["id"])]
        report.image(split, index, len(annotations), height, width)
        yield {
            "name": os.path.splitext(image["file_name"])[0],
            "image": image_bytes,
            "image_id": int(image["id"]),
            "height": height,
            "width": width,
            **_instances(annotations, height, width, label_of, split, path, report),
        }


def _check_images(manual_dir: str, split: str, dataset: dict) -> None:
    """Every listed image file exists (checked before anything is written)."""
    image_dir = os.path.join(manual_dir, SPLIT_DIRS[split])
    present = set(os.listdir(image_dir)) if os.path.isdir(image_dir) else set()
    missing = [
        image["file_name"] for image in dataset["images"] if image["file_name"] not in present
    ]
    if missing:
        raise ValueError(
            f"missing COCO {split} image: expected it at "
            f"{os.path.join(image_dir, missing[0])} ({len(missing)} of "
            f"{len(dataset['images'])} listed in {annotation_path(manual_dir, split)}"
            f" are missing). Extract {SPLIT_DIRS[split]}.zip into {manual_dir}."
        )


def build_splits(
    manual_dir: str, report: ParseReport, splits: Sequence[str] = tuple(SPLIT_DIRS)
) -> tuple[dict[str, Callable[[], Iterator[dict]]], dict[str, Any]]:
    """(split → generator of records, the dataset metadata); checks every file first."""
    datasets = {split: load_annotations(annotation_path(manual_dir, split)) for split in splits}
    category_ids = names = None
    for split, dataset in datasets.items():
        ids, split_names = categories(dataset, annotation_path(manual_dir, split))
        if category_ids is not None and ids != category_ids:
            raise ValueError(
                f"the categories of {annotation_path(manual_dir, split)} differ from "
                f"those of {annotation_path(manual_dir, splits[0])}; both splits "
                "must use the same category list."
            )
        category_ids, names = ids, split_names
        _check_images(manual_dir, split, dataset)
    if len(category_ids) == len(COCO_CATEGORY_IDS) and category_ids != list(COCO_CATEGORY_IDS):
        _log.warning(
            "80 categories, but not COCO 2017's ids %s: labels follow the file's ids.",
            COCO_CATEGORY_IDS,
        )
    meta = {
        "classes": names,
        "category_ids": category_ids,
        "coco2017_categories": category_ids == list(COCO_CATEGORY_IDS),
        "label_mapping": "label k = the k-th smallest category id (category_ids[k])",
        "min_image_size": MIN_IMAGE_SIZE,
    }
    generators = {
        s: (lambda s=s: _examples(manual_dir, s, datasets[s], category_ids, report)) for s in splits
    }
    return generators, meta


__all__ = [
    "SPLIT_DIRS",
    "COCO_CATEGORY_IDS",
    "MIN_IMAGE_SIZE",
    "annotation_path",
    "build_splits",
    "decode_record",
    "decode_masks",
    "category_ids",
    "coco_ground_truth",
    "train_indices",
    "load_annotations",
    "categories",
    "ParseReport",
]
