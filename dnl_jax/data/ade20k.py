"""ADE20K (SceneParsing challenge 2016): 150 classes, 0 ("other") → 255 ("reduce zero label").

Raw input (`manual_dir`), the extracted ADEChallengeData2016.zip:

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png

Annotation value v in 1..150 becomes train id v-1; 0 becomes 255, as mmseg's
`reduce_zero_label=True`. Values above 150 are outside the format: 255, counted in the prepared
metadata.json.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from dnl_jax.data import records

ROOT = "ADEChallengeData2016"
SPLIT_DIRS = {"train": "training", "val": "validation"}
CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)
NUM_RAW_VALUES = len(CLASSES) + 1  # 0 = other, 1..150 = classes
REDUCE_ZERO_LABEL = np.concatenate([[records.IGNORE_LABEL], np.arange(len(CLASSES))]).astype(
    np.uint8
)


def _examples(root: str, split: str, counter: records.OutOfRangeCounter) -> Iterator[dict]:
    image_dir = os.path.join(root, "images", SPLIT_DIRS[split])
    label_dir = os.path.join(root, "annotations", SPLIT_DIRS[split])
    for filename in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(filename)
        if ext.lower() != ".jpg":
            continue
        image_path = os.path.join(image_dir, filename)
        annotation = records.require_file(
            os.path.join(label_dir, stem + ".png"), f"ADE20K annotation of {image_path}"
        )
        with open(image_path, "rb") as f_image, open(annotation, "rb") as f_label:
            example, outside = records.segmentation_example(
                stem,
                f_image.read(),
                f_label.read(),
                lookup=REDUCE_ZERO_LABEL,
                num_valid_raw=NUM_RAW_VALUES,
                image_what=image_path,
                label_what=annotation,
            )
        counter.add(split, stem, outside)
        yield example


def build_splits(
    manual_dir: str, counter: records.OutOfRangeCounter, splits: tuple[str, ...] = tuple(SPLIT_DIRS)
) -> dict[str, Callable[[], Iterator[dict]]]:
    """split → generator of records; checks the directory tree first."""
    root = os.path.join(manual_dir, ROOT)
    for split in splits:
        for kind in ("images", "annotations"):
            folder = os.path.join(root, kind, SPLIT_DIRS[split])
            if not os.path.isdir(folder):
                raise ValueError(
                    f"missing ADE20K folder: expected {folder} (extract "
                    f"ADEChallengeData2016.zip into {manual_dir})."
                )
    return {s: (lambda s=s: _examples(root, s, counter)) for s in splits}


META = {
    "classes": list(CLASSES),
    "ignore_label": records.IGNORE_LABEL,
    "label_mapping": "reduce_zero_label: 0 -> 255, v -> v-1",
}
