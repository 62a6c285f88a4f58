"""The preprocessing record derived from the recipes' configs: the evaluator's settings, the
datasets' classes, colours and written ids; a record survives its JSON round trip."""

import json
import os

import numpy as np
import pytest

from dnl_jax import tasks
from dnl_jax.cli.predict import load_config_file
from dnl_jax.data import cityscapes, transforms
from dnl_jax.inference import PreprocessingRecord, record_from_config
from dnl_jax.inference.classes import dataset_classes

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")


def _record(name):
    """The record the trainer writes for the recipe `name` (its task resolved as `tasks.build`
    does)."""
    config = load_config_file(os.path.join(CONFIGS, name))
    return record_from_config(config, tasks.for_dataset(config.data.name))


def test_cityscapes_slide_recipe():
    record = _record("cityscapes_dnl_r50-d8_769x769_40k.py")
    assert record.inference["mode"] == "slide"
    assert record.inference["crop_size"] == [769, 769] and record.inference["stride"] == [513, 513]
    assert record.inference["align_corners"] is True
    assert record.mean == transforms.IMAGENET_MEAN and record.std == transforms.IMAGENET_STD
    assert record.resize == {"policy": "keep_ratio", "base_size": [2049, 1025]}  # the recipe's
    assert record.class_names[0] == "road" and record.palette[0] == (128, 64, 128)
    assert list(record.label_ids) == cityscapes.TRAIN_TO_LABEL.tolist()
    again = PreprocessingRecord.from_dict(json.loads(record.to_json()))
    assert again == record


@pytest.mark.parametrize(
    "name, classes, first_id",
    [
        ("ade20k_dnl_r101-d8_512x512_80k.py", 150, 1),
        ("pascal_context_dnl_r101-d8_520x520_30k.py", 59, 0),
    ],
)
def test_other_benchmarks(name, classes, first_id):
    record = _record(name)
    assert record.num_classes == classes and len(record.class_names) == classes
    assert record.label_ids[0] == first_id and len(set(record.palette)) == classes


def test_synthetic_and_video_and_detection_recipes():
    demo = _record("synthetic_dnl_tiny.py")
    assert demo.mean == (127.5,) * 3 and demo.std == (63.75,) * 3
    np.testing.assert_allclose(demo.normalise(np.array([[[255, 127.5, 0]]])), [[[2, 0, -2]]])
    video = _record("kinetics_dnl_i3d_r50_32x2.py")
    assert video.task == "video" and video.inference["clip_len"] == 32
    detector = _record("coco_mask_rcnn_r50_fpn_dnl_c4_1x.py")
    assert detector.task == "detection" and detector.resize["policy"] == "detection"
    assert detector.label_ids[:3] == (1, 2, 3) and len(detector.label_ids) == 80


def test_unknown_dataset_classes_are_generic():
    names, palette, ids = dataset_classes("", 4)
    assert names == ["class 0", "class 1", "class 2", "class 3"] and palette.shape == (4, 3)
    assert ids == [0, 1, 2, 3]
