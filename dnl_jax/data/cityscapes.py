"""Cityscapes (fine annotations): the official zips → 19 train ids, everything else ignored.

Raw input (`manual_dir`), as downloaded from the Cityscapes site:

    leftImg8bit_trainvaltest.zip   leftImg8bit/{train,val,test}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    gtFine_trainvaltest.zip        gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png

The label ids 0..33 of cityscapesScripts' `labels.py` map to train ids 0..18 (`LABEL_TO_TRAIN`),
every other id to 255, as mmseg's `cityscapes.py` converter does. Values above 33 are not
Cityscapes ids: they become 255 too and are counted in the prepared metadata.json. (The test
split's annotations are placeholders; its records are kept for submission PNGs.)
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Iterator

import numpy as np

from dnl_jax.data import records

IMAGES_ZIP = "leftImg8bit_trainvaltest.zip"
LABELS_ZIP = "gtFine_trainvaltest.zip"
SPLITS = ("train", "val", "test")
CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# Colour of each Cityscapes train id 0..18 (road, ..., bicycle), as the benchmark draws them.
PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)


# Label id (cityscapesScripts) of each train id 0..18, in CLASSES order.
TRAIN_TO_LABEL = np.array(
    [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.uint8
)
NUM_LABEL_IDS = 34  # ids 0..33; -1 (license plate) never appears in *_labelIds.png
LABEL_TO_TRAIN = np.full(NUM_LABEL_IDS, records.IGNORE_LABEL, np.uint8)
LABEL_TO_TRAIN[TRAIN_TO_LABEL] = np.arange(len(CLASSES), dtype=np.uint8)

_IMAGE_NAME = re.compile(r"^leftImg8bit/(train|val|test)/([^/]+)/(\2_\d+_\d+)_leftImg8bit\.png$")


def label_path(split: str, city: str, stem: str) -> str:
    """Path inside gtFine_trainvaltest.zip of the annotation of image `stem`."""
    return f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"


def _image_entries(images: zipfile.ZipFile, split: str) -> list[tuple[str, str, str]]:
    """Sorted (zip path, city, stem) of the split's images."""
    entries = []
    for path in images.namelist():
        match = _IMAGE_NAME.match(path)
        if match and match.group(1) == split:
            entries.append((path, match.group(2), match.group(3)))
    return sorted(entries)


def _examples(manual_dir: str, split: str, counter: records.OutOfRangeCounter) -> Iterator[dict]:
    images_zip = os.path.join(manual_dir, IMAGES_ZIP)
    labels_zip = os.path.join(manual_dir, LABELS_ZIP)
    with zipfile.ZipFile(images_zip) as images, zipfile.ZipFile(labels_zip) as labels:
        label_names = set(labels.namelist())
        for image_path, city, stem in _image_entries(images, split):
            annotation = label_path(split, city, stem)
            if annotation not in label_names:
                raise ValueError(
                    f"missing annotation {annotation} in {labels_zip} for image "
                    f"{image_path}; the gtFine zip looks incomplete, download "
                    "it again."
                )
            example, outside = records.segmentation_example(
                stem,
                images.read(image_path),
                labels.read(annotation),
                lookup=LABEL_TO_TRAIN,
                num_valid_raw=NUM_LABEL_IDS,
                image_what=f"{images_zip}:{image_path}",
                label_what=f"{labels_zip}:{annotation}",
            )
            counter.add(split, stem, outside)
            yield example


def build_splits(
    manual_dir: str, counter: records.OutOfRangeCounter, splits: tuple[str, ...] = SPLITS
) -> dict[str, Callable[[], Iterator[dict]]]:
    """split → generator of records; checks first that both zips exist and are zips."""
    for name in (IMAGES_ZIP, LABELS_ZIP):
        path = records.require_file(os.path.join(manual_dir, name), f"Cityscapes archive {name}")
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path} is not a zip archive (truncated download?); download it again."
            )
    with zipfile.ZipFile(os.path.join(manual_dir, IMAGES_ZIP)) as images:
        present = [s for s in splits if _image_entries(images, s)]
    missing = [s for s in ("train", "val") if s in splits and s not in present]
    if missing:
        raise ValueError(
            f"{os.path.join(manual_dir, IMAGES_ZIP)} has no images for split(s) "
            f"{missing} (expected leftImg8bit/SPLIT/CITY/*_leftImg8bit.png)."
        )
    return {s: (lambda s=s: _examples(manual_dir, s, counter)) for s in present}


def train_ids_to_label_ids(prediction: np.ndarray) -> np.ndarray:
    """uint8 `[H, W]` train ids → Cityscapes label ids (the submission format); 255 → 0."""
    table = np.zeros(256, np.uint8)
    table[: len(TRAIN_TO_LABEL)] = TRAIN_TO_LABEL
    return table[np.asarray(prediction, np.uint8)]


META = {
    "classes": list(CLASSES),
    "ignore_label": records.IGNORE_LABEL,
    "label_mapping": "cityscapes labelIds -> 19 trainIds, others 255",
}
