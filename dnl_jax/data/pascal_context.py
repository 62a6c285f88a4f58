"""PASCAL-Context, 59 classes + ignore, on the VOC2010 images.

Raw input (`manual_dir`), either annotation form:

    VOCdevkit/VOC2010/JPEGImages/ID.jpg                       the VOC2010 images
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt   (or ImageSets/Main/...)
  and one of
    trainval/ID.mat                 the original release (trainval.tar.gz): 'LabelMap', 459 ids
    VOCdevkit/VOC2010/SegmentationClassContext/ID.png   mmseg's converted masks: 0 = background,
                                                        1..59 = the 59 classes

The 59 classes are those of the 459-label set listed in `CLASS_IDS_459` (the standard
PASCAL-Context-59 subset, sorted by id, which is also alphabetical). Every other label and
"background" become 255 (mmseg's PascalContextDataset59 with reduce_zero_label). Values beyond
the label set are counted in the prepared metadata.json.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from dnl_jax.data import records

VOC_ROOT = os.path.join("VOCdevkit", "VOC2010")
MAT_DIR = "trainval"
PNG_DIR = os.path.join(VOC_ROOT, "SegmentationClassContext")
SPLITS = ("train", "val")
CLASSES = (
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)
CLASS_IDS_459 = np.array(
    [
        2,
        9,
        18,
        19,
        22,
        23,
        25,
        31,
        33,
        34,
        44,
        45,
        46,
        59,
        65,
        68,
        72,
        80,
        85,
        98,
        104,
        105,
        113,
        115,
        144,
        158,
        159,
        162,
        187,
        189,
        207,
        220,
        232,
        258,
        259,
        260,
        284,
        295,
        296,
        308,
        324,
        326,
        347,
        349,
        354,
        355,
        360,
        366,
        368,
        397,
        415,
        416,
        420,
        424,
        427,
        440,
        445,
        454,
        458,
    ]
)
NUM_459_VALUES = 460  # 0 (unlabelled) and 1..459
FROM_459 = np.full(NUM_459_VALUES, records.IGNORE_LABEL, np.uint8)
FROM_459[CLASS_IDS_459] = np.arange(len(CLASSES), dtype=np.uint8)
NUM_60_VALUES = len(CLASSES) + 1  # converted masks: 0 = background, 1..59
FROM_60 = np.concatenate([[records.IGNORE_LABEL], np.arange(len(CLASSES))]).astype(np.uint8)


def _split_ids(manual_dir: str, split: str) -> list[str]:
    """Image ids of `split`, from SegmentationContext lists (mmseg) or VOC2010 Main lists."""
    candidates = [
        os.path.join(manual_dir, VOC_ROOT, "ImageSets", folder, f"{split}.txt")
        for folder in ("SegmentationContext", "Main")
    ]
    for path in candidates:
        if os.path.isfile(path):
            with open(path) as f:
                return [line.split()[0] for line in f if line.strip()]
    raise ValueError(
        f"missing PASCAL-Context split list for {split!r}: expected {candidates[0]} "
        f"or {candidates[1]}."
    )


def _read_mat_label(path: str) -> np.ndarray:
    """'LabelMap' of an original PASCAL-Context .mat file, integer `[H, W]`."""
    import scipy.io  # a dependency of jax; only needed for this annotation form

    try:
        content = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises several types for a damaged file
        raise ValueError(
            f"{path}: unreadable .mat annotation ({error}); extract it again from trainval.tar.gz."
        ) from error
    if "LabelMap" not in content:
        raise ValueError(f"{path}: no 'LabelMap' variable; is this a PASCAL-Context annotation?")
    return np.asarray(content["LabelMap"])


def _annotation_form(manual_dir: str) -> str:
    if os.path.isdir(os.path.join(manual_dir, MAT_DIR)):
        return "mat"
    if os.path.isdir(os.path.join(manual_dir, PNG_DIR)):
        return "png"
    raise ValueError(
        "missing PASCAL-Context annotations: expected the folder "
        f"{os.path.join(manual_dir, MAT_DIR)} (ID.mat files from trainval.tar.gz) or "
        f"{os.path.join(manual_dir, PNG_DIR)} (mmseg-converted ID.png masks)."
    )


def _examples(
    manual_dir: str, split: str, form: str, counter: records.OutOfRangeCounter
) -> Iterator[dict]:
    for image_id in _split_ids(manual_dir, split):
        image_path = records.require_file(
            os.path.join(manual_dir, VOC_ROOT, "JPEGImages", f"{image_id}.jpg"), "VOC2010 image"
        )
        if form == "mat":
            label_path = os.path.join(manual_dir, MAT_DIR, f"{image_id}.mat")
            label = _read_mat_label(records.require_file(label_path, "PASCAL-Context annotation"))
            lookup, num_raw = FROM_459, NUM_459_VALUES
        else:
            label_path = os.path.join(manual_dir, PNG_DIR, f"{image_id}.png")
            with open(records.require_file(label_path, "PASCAL-Context mask"), "rb") as f:
                label, lookup, num_raw = f.read(), FROM_60, NUM_60_VALUES
        with open(image_path, "rb") as f:
            example, outside = records.segmentation_example(
                image_id,
                f.read(),
                label,
                lookup=lookup,
                num_valid_raw=num_raw,
                image_what=image_path,
                label_what=label_path,
            )
        counter.add(split, image_id, outside)
        yield example


def build_splits(
    manual_dir: str, counter: records.OutOfRangeCounter, splits: tuple[str, ...] = SPLITS
) -> dict[str, Callable[[], Iterator[dict]]]:
    """split → generator of records; checks the annotation folder and split lists first."""
    form = _annotation_form(manual_dir)
    for split in splits:
        _split_ids(manual_dir, split)
    return {s: (lambda s=s: _examples(manual_dir, s, form, counter)) for s in splits}


META = {
    "classes": list(CLASSES),
    "ignore_label": records.IGNORE_LABEL,
    "label_mapping": "PASCAL-Context 459 ids (or converted 0..59) -> 59 classes, others 255",
}
