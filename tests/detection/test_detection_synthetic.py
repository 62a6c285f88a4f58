"""Synthetic detection scenes: deterministic, tight boxes, classes decided by the beacon."""

import numpy as np
import pytest

from dnl_jax.data import synthetic_detection
from dnl_jax.data.synthetic import palette


def test_scenes_are_deterministic_with_tight_boxes_and_disjoint_masks():
    source = synthetic_detection.SyntheticDetection(20, image_size=64, seed=3)
    for index in range(20):
        example = source[index]
        again = source[index]
        np.testing.assert_array_equal(example["image"], again["image"])
        valid = example["gt_valid"]
        assert 1 <= valid.sum() <= 3 and example["image"].shape == (64, 64, 3)
        for box, mask in zip(example["gt_boxes"][valid], example["gt_masks"][valid], strict=False):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert example["gt_masks"].sum(0).max() == 1  # instances never overlap
        assert set(example["gt_labels"][valid]) <= set(range(source.num_classes))
    val = synthetic_detection.SyntheticDetection(1, image_size=64, split="val", seed=3)
    assert not np.array_equal(val[0]["image"], source[0]["image"])


def test_the_beacon_alone_flips_every_class():
    draw = lambda cue: synthetic_detection.draw_detection_scene(  # noqa: E731
        np.random.default_rng(7), 64, palette(2), 0.1, cue=cue
    )
    dark, light = draw(0), draw(1)
    valid = dark["gt_valid"]
    np.testing.assert_array_equal(dark["gt_masks"], light["gt_masks"])
    np.testing.assert_array_equal(light["gt_labels"][valid], dark["gt_labels"][valid] + 1)
    # Object pixels look the same; only the beacon's pixels differ (and the noise draw).
    differs = np.abs(dark["image"] - light["image"]).max(-1) > 2.0
    assert differs.sum() == 16 * 16 and not (differs & dark["gt_masks"].any(0)).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        synthetic_detection.SyntheticDetection(1, split="test")
    with pytest.raises(ValueError, match="image_size >= 16"):
        synthetic_detection.SyntheticDetection(1, image_size=8)
