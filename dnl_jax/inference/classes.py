"""Class names, colours and written label ids of each dataset, for the label PNGs and overlays.

    names, palette, label_ids = dataset_classes('cityscapes', 19)

`palette[k]` is the RGB colour of class k (uint8 values); `label_ids[k]` the id written for class
k: in label PNGs the dataset's own ids (Cityscapes label ids, ADE20K's 1..150), else k itself;
for detectors the COCO category id (COCO's own, 1..K for the synthetic scenes).
The names, colours and ids of the registered datasets are their units' (`data.datasets`: Cityscapes
uses its benchmark's colours, cityscapesScripts' `labels.py`); the others get evenly spaced,
distinguishable colours (the ids carry the meaning, the colours are for the eye).
"""

from __future__ import annotations

import colorsys

import numpy as np

from dnl_jax.data import coco, datasets, synthetic


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
    the names, colours and ids of a registered dataset's unit (`data.datasets`) when its class
    count is `num_classes`; generic names ('class k') when the dataset is unknown or its class
    count differs."""
    if dataset == "synthetic_detection":  # class 2a + cue (data/synthetic_detection.py)
        names = [f"colour {k // 2}, {('dark', 'light')[k % 2]} cue" for k in range(num_classes)]
        return names, spread_palette(num_classes), list(range(1, num_classes + 1))
    if dataset == "coco" and num_classes == len(coco.COCO_CATEGORY_IDS):
        names = [f"COCO category {i}" for i in coco.COCO_CATEGORY_IDS]
        return names, spread_palette(num_classes), list(coco.COCO_CATEGORY_IDS)
    if dataset == "synthetic" and num_classes >= 5:
        names, palette = synthetic_classes(num_classes)
        return names, palette, list(range(num_classes))
    unit = datasets.DATASETS.get(dataset)
    if unit is not None and unit.classes and len(unit.classes) == num_classes:
        colours = np.asarray(unit.palette, np.uint8) if unit.palette else None
        return (
            list(unit.classes),
            spread_palette(num_classes) if colours is None else colours,
            unit.written_ids(),
        )
    return (
        [f"class {k}" for k in range(num_classes)],
        spread_palette(num_classes),
        list(range(num_classes)),
    )


def dataset_for_classes(num_classes: int) -> str:
    """The benchmark a converted checkpoint with `num_classes` outputs was most likely trained
    on: the first segmentation dataset of the registry with that many classes (19 Cityscapes,
    150 ADE20K, 59 PASCAL-Context); '' when none has that count."""
    for name, unit in datasets.DATASETS.items():
        if unit.task == "segmentation" and len(unit.classes) == num_classes and unit.classes:
            return name
    return ""


__all__ = ["dataset_classes", "dataset_for_classes", "spread_palette"]
