"""The mmseg-style augmentation and the video sampling, on tiny arrays."""

import colorsys

import numpy as np
import pytest

from dnl_jax.data import transforms


def _example(rng, height=24, width=40):
    return {
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "label": rng.integers(0, 5, (height, width)).astype(np.uint8),
    }


def test_rescale_size_keeps_aspect_within_both_edges():
    # Cityscapes 1024x2048 at base (2048, 1024) stays; at ratio 0.5 halves.
    assert transforms.rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert transforms.rescale_size(1024, 2048, (1024, 512)) == (512, 1024)
    # A square image is limited by the short edge bound.
    assert transforms.rescale_size(100, 100, (2048, 512)) == (512, 512)


def test_random_crop_respects_cat_max_ratio():
    rng = np.random.default_rng(0)
    label = np.zeros((40, 40), np.uint8)
    label[:, 30:] = 1  # only crops reaching x >= 30 have two classes
    image = np.zeros((40, 40, 3), np.uint8)
    for _ in range(20):
        _, crop = transforms.random_crop(
            image, label, rng, (10, 20), cat_max_ratio=0.75, max_tries=50
        )
        counts = np.bincount(crop.ravel(), minlength=2)
        assert counts.max() / counts.sum() < 0.75
    # Without the constraint most crops are single-class.
    single = sum(
        len(np.unique(transforms.random_crop(image, label, rng, (10, 20), cat_max_ratio=1.0)[1]))
        == 1
        for _ in range(20)
    )
    assert single > 5


def test_crop_ignores_the_ignore_label_when_counting():
    label = np.full((10, 10), 255, np.uint8)
    label[0, 0], label[0, 1] = 1, 2  # 50/50 between two classes, the rest ignored
    _, crop = transforms.random_crop(
        np.zeros((10, 10, 3), np.uint8), label, np.random.default_rng(0), (10, 10)
    )
    np.testing.assert_array_equal(crop, label)


def test_hsv_round_trip_matches_colorsys():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, (50, 3)).astype(np.float64)
    hsv = transforms.rgb_to_hsv(rgb)
    for pixel, ours in zip(rgb, hsv, strict=False):
        expected = colorsys.rgb_to_hsv(*(pixel / 255.0))
        np.testing.assert_allclose(ours, [expected[0], expected[1], expected[2] * 255], atol=1e-6)
    np.testing.assert_allclose(transforms.hsv_to_rgb(hsv), rgb, atol=1e-6)


def test_photometric_distortion_changes_colours_but_not_shape():
    rng = np.random.default_rng(0)
    image = _example(rng)["image"]
    outputs = [transforms.photometric_distortion(image, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert sum(not np.array_equal(o, image) for o in outputs) >= 6
    np.testing.assert_array_equal(
        outputs[3], transforms.photometric_distortion(image, np.random.default_rng(3))
    )


def test_train_augment_shapes_padding_and_determinism():
    example = _example(np.random.default_rng(0))
    kwargs = dict(crop_size=(32, 48), base_size=(40, 24), ratio_range=(0.5, 0.6))
    out = transforms.segmentation_train_augment(example, np.random.default_rng(7), **kwargs)
    assert out["image"].shape == (32, 48, 3) and out["image"].dtype == np.float32
    assert out["label"].shape == (32, 48)
    # At ratio <= 0.6 the resized image is at most 14x24, so the rest is padding.
    assert np.all(out["label"][15:] == 255) and np.all(out["image"][15:] == 0)
    again = transforms.segmentation_train_augment(example, np.random.default_rng(7), **kwargs)
    np.testing.assert_array_equal(out["image"], again["image"])
    assert set(np.unique(out["label"])) <= set(range(5)) | {255}


def test_flip_flips_image_and_label_together():
    example = _example(np.random.default_rng(0))
    flipped_any = False
    for seed in range(6):
        image, label = transforms.random_flip(
            example["image"], example["label"], np.random.default_rng(seed)
        )
        if not np.array_equal(label, example["label"]):
            flipped_any = True
            np.testing.assert_array_equal(image, example["image"][:, ::-1])
            np.testing.assert_array_equal(label, example["label"][:, ::-1])
    assert flipped_any


def test_normalize_and_pad_errors():
    image = np.full((2, 2, 3), 123.675, np.float32)
    assert abs(transforms.normalize(image)[0, 0, 0]) < 1e-6
    with pytest.raises(ValueError, match="larger than the target"):
        transforms.pad_to(np.zeros((5, 5, 3)), None, (4, 8))


def test_eval_preprocess_resizes_image_only():
    example = _example(np.random.default_rng(0))
    out = transforms.segmentation_eval_preprocess(example, base_size=(20, 12))
    assert out["image"].shape == (12, 20, 3) and out["label"].shape == (24, 40)


def test_clip_sampling():
    np.testing.assert_array_equal(transforms.clip_indices(10, 7, 4, 2), [7, 9, 1, 3])
    rng = np.random.default_rng(0)
    starts = {transforms.random_clip_indices(20, rng, clip_len=4, stride=2)[0] for _ in range(50)}
    assert starts == set(range(0, 14))  # span 7: starts 0..13
    views = transforms.uniform_clip_indices(20, num_clips=3, clip_len=4, stride=2)
    np.testing.assert_array_equal(views[:, 0], [0, 6, 13])
    # One clip (the trainer's periodic video evaluation) is the middle one: starts 0..14 → 7.
    middle = transforms.uniform_clip_indices(21, num_clips=1, clip_len=4, stride=2)
    np.testing.assert_array_equal(middle, [[7, 9, 11, 13]])


def test_video_augment_and_views():
    rng = np.random.default_rng(0)
    example = {"video": rng.integers(0, 256, (9, 12, 16, 3), dtype=np.uint8), "label": 3}
    out = transforms.video_train_augment(
        example,
        np.random.default_rng(1),
        clip_len=4,
        stride=2,
        crop_size=8,
        short_side_range=(10, 12),
    )
    assert out["video"].shape == (4, 8, 8, 3) and out["label"] == 3
    again = transforms.video_train_augment(
        example,
        np.random.default_rng(1),
        clip_len=4,
        stride=2,
        crop_size=8,
        short_side_range=(10, 12),
    )
    np.testing.assert_array_equal(out["video"], again["video"])
    views = transforms.video_eval_views(example, clip_len=4, stride=2, crop_size=8, num_clips=2)
    assert views["video"].shape == (6, 4, 8, 8, 3)
    # Three crops along the long (width) side: left, centre, right.
    assert not np.array_equal(views["video"][0], views["video"][2])
