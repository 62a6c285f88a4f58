"""Class names, colours and written label ids of each dataset, for the label PNGs and overlays.

    names, palette, label_ids = dataset_classes('cityscapes', 19)

`palette[k]` is the RGB colour of class k (uint8 values); `label_ids[k]` the id written for class
k: in label PNGs the dataset's own ids (Cityscapes label ids, ADE20K's 1..150), else k itself;
for detectors the COCO category id (COCO's own, 1..K for the synthetic scenes).
Cityscapes uses its benchmark's colours (cityscapesScripts' `labels.py`); the other datasets get
evenly spaced, distinguishable colours (the ids carry the meaning, the colours are for the eye).
"""

from __future__ import annotations

import colorsys

import numpy as np

from dnl_jax.data import ade20k, cityscapes, coco, pascal_context, synthetic

# Colour of each Cityscapes train id 0..18 (road, ..., bicycle), as the benchmark draws them.
CITYSCAPES_PALETTE = (
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


def spread_palette(count: int) -> np.ndarray:
    """`count` colours `[count, 3]` uint8: hues by the golden ratio, three brightness levels."""
    colours = []
    for k in range(count):
        hue = (k * 0.618033988749895) % 1.0
        value = (0.95, 0.75, 0.55)[k % 3]
        colours.append(colorsys.hsv_to_rgb(hue, 0.8, value))
    return np.round(np.asarray(colours, np.float64).reshape(count, 3) * 255).astype(np.uint8)


def synthetic_classes(num_classes: int) -> tuple[list[str], np.ndarray]:
    """The beacon scenes' classes (data/synthetic.py): background, the two beacons, then two
    classes per object colour (dark / light cue), each drawn in its object's colour, the
    light-cue class brighter."""
    names = ["background", "dark beacon", "light beacon"]
    colours: list[tuple[int, ...]] = [(115, 115, 115), (20, 20, 20), (240, 240, 240)]
    hues = synthetic.palette((num_classes - 3) // 2)
    for colour_index, rgb in enumerate(hues):
        for cue, shade in (("dark", 0.6), ("light", 1.0)):
            names.append(f"colour {colour_index}, {cue} cue")
            colours.append(tuple(int(round(255 * shade * c)) for c in rgb))
    return names[:num_classes], np.asarray(colours[:num_classes], np.uint8)


def dataset_classes(dataset: str, num_classes: int) -> tuple[list[str], np.ndarray, list[int]]:
    """(names, palette uint8 `[K, 3]`, written ids) of the `num_classes` classes of `dataset`;
    generic names ('class k') when the dataset is unknown or its class count differs."""
    known = {
        "cityscapes": (cityscapes.CLASSES, np.asarray(CITYSCAPES_PALETTE, np.uint8)),
        "ade20k": (ade20k.CLASSES, None),
        "pascal_context": (pascal_context.CLASSES, None),
    }
    if dataset == "synthetic_detection":  # class 2a + cue (data/synthetic_detection.py)
        names = [f"colour {k // 2}, {('dark', 'light')[k % 2]} cue" for k in range(num_classes)]
        return names, spread_palette(num_classes), list(range(1, num_classes + 1))
    if dataset == "coco" and num_classes == len(coco.COCO_CATEGORY_IDS):
        names = [f"COCO category {i}" for i in coco.COCO_CATEGORY_IDS]
        return names, spread_palette(num_classes), list(coco.COCO_CATEGORY_IDS)
    if dataset == "synthetic" and num_classes >= 5:
        names, palette = synthetic_classes(num_classes)
        return names, palette, list(range(num_classes))
    if dataset in known and len(known[dataset][0]) == num_classes:
        known_names, known_palette = known[dataset]
        palette = spread_palette(num_classes) if known_palette is None else known_palette
        ids = list(range(num_classes))
        if dataset == "cityscapes":
            ids = [int(v) for v in cityscapes.TRAIN_TO_LABEL]
        elif dataset == "ade20k":
            ids = [k + 1 for k in range(num_classes)]  # the challenge's 1..150 (0 = other)
        return list(known_names), palette, ids
    return (
        [f"class {k}" for k in range(num_classes)],
        spread_palette(num_classes),
        list(range(num_classes)),
    )


def dataset_for_classes(num_classes: int) -> str:
    """The benchmark a converted checkpoint with `num_classes` outputs was most likely trained
    on (19 Cityscapes, 150 ADE20K, 59 PASCAL-Context); '' when none has that count."""
    counts = {
        len(cityscapes.CLASSES): "cityscapes",
        len(ade20k.CLASSES): "ade20k",
        len(pascal_context.CLASSES): "pascal_context",
    }
    return counts.get(num_classes, "")


__all__ = ["dataset_classes", "dataset_for_classes", "spread_palette", "CITYSCAPES_PALETTE"]
