"""The class names, colours and written ids of predictions come from the dataset units
(data/datasets.py), the one table of them: a dataset added to the registry gets its own."""

import numpy as np

from dnl_jax.data import cityscapes, datasets
from dnl_jax.inference.classes import dataset_classes, dataset_for_classes


def test_registered_units_give_their_names_colours_and_ids():
    names, palette, ids = dataset_classes("cityscapes", 19)
    assert names == list(cityscapes.CLASSES)
    np.testing.assert_array_equal(palette, np.asarray(cityscapes.PALETTE, np.uint8))
    assert ids == [int(v) for v in cityscapes.TRAIN_TO_LABEL]  # the benchmark's label ids
    names, palette, ids = dataset_classes("ade20k", 150)
    assert names[0] == "wall" and ids == list(range(1, 151))  # the challenge's 1..150
    assert palette.shape == (150, 3) and len({tuple(c) for c in palette}) == 150
    assert [dataset_for_classes(k) for k in (19, 150, 59, 7)] == [
        "cityscapes",
        "ade20k",
        "pascal_context",
        "",
    ]


def test_a_new_unit_is_read_from_the_registry(monkeypatch):
    toy = datasets.Dataset(
        "toy_marks",
        "segmentation",
        classes=("ground", "mark"),
        palette=((0, 0, 0), (255, 255, 255)),
        submission_ids=lambda train_ids: train_ids + 10,
    )
    monkeypatch.setitem(datasets.DATASETS, toy.name, toy)
    names, palette, ids = dataset_classes("toy_marks", 2)
    assert names == ["ground", "mark"] and ids == [10, 11]
    assert palette.tolist() == [[0, 0, 0], [255, 255, 255]]
    assert dataset_for_classes(2) == "toy_marks"
    assert dataset_classes("toy_marks", 3)[0] == ["class 0", "class 1", "class 2"]  # other count
