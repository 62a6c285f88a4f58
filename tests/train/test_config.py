"""The config schema's validation: unknown and impossible keys, the checks of each task's
data section and evaluator sections, and models that must fit the dataset's task."""

import os

import pytest

from dnl_jax import tasks
from dnl_jax.evaluators import section
from dnl_jax.train.config import base_config, validate_config


def _valid(config, devices=4):
    validate_config(
        config, tasks.for_dataset(config.data.name), num_devices=devices, num_processes=1
    )


def test_config_unknown_key_suggests_close_name():
    config = base_config()
    config.optimiser = base_config().optimizer
    with pytest.raises(ValueError, match=r"unknown config key 'optimiser.*Did you mean.*optimizer"):
        _valid(config)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("parallelism", "pjit", "choose one of"),
        ("batch_size", 18, "divisible by the 4 devices"),
        ("grad_accum_steps", 3, "not divisible by config.grad_accum_steps"),
        ("total_steps", 0, "total_steps=0 must be >= 1"),
    ],
)
def test_config_impossible_values(key, value, message):
    config = base_config()
    config[key] = value
    with pytest.raises(ValueError, match=message):
        _valid(config)


def test_config_nested_impossible_values():
    config = base_config()
    config.optimizer.warmup_steps = config.total_steps
    with pytest.raises(ValueError, match="warmup_steps"):
        _valid(config)
    config = base_config()
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match="model.dtype"):
        _valid(config)
    config = base_config()
    for bad in (3, 4):
        config.data.num_classes = bad
        with pytest.raises(
            ValueError, match=f"num_classes={bad}: the synthetic scenes need an odd"
        ):
            _valid(config)
    _valid(base_config())  # and the defaults pass


def test_config_real_dataset_keys_are_checked():
    config = base_config()
    config.data.name = "cityscapes"
    config.data.data_dir = "/does/not/exist"  # checked when the data is opened, not here
    with pytest.raises(
        ValueError,
        match="type='batched' does not apply to the segmentation "
        "dataset 'cityscapes'; use type='segmentation'",
    ):
        _valid(config)
    config.evals.val = section("segmentation", every_steps=10)
    _valid(config)
    config.evals.val.mode = "slide"
    with pytest.raises(
        ValueError, match="needs config.evals.val.crop_size and config.evals.val.stride"
    ):
        _valid(config)
    config = base_config()
    config.data.name = "ade20k"
    config.data.segmentation.ratio_range = (2.0, 0.5)
    with pytest.raises(ValueError, match="ratio_range"):
        _valid(config)
    config.data.name = "lvis"
    with pytest.raises(ValueError, match="config.data.name='lvis'; choose one of"):
        _valid(config)


def _video_config(**values):
    config = base_config()
    config.update_from_flattened_dict(
        {
            "data.name": "kinetics",
            "model.name": "dnl_i3d_tiny",
            "data.video.crop_size": (32, 32),
            "data.video.short_side_range": (32, 40),
        }
    )
    config.evals.val_multi_view = section("multi_view")
    config.update_from_flattened_dict(values)
    return config


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data.video.clip_len", 0, r"config.data.video.clip_len=0 must be >= 1"),
        ("data.video.frame_stride", -1, r"config.data.video.frame_stride=-1 must be >= 1"),
        ("data.video.crop_size", (32, 48), r"crop_size=\(32, 48\): video crops are square"),
        (
            "data.video.short_side_range",
            (24, 40),
            r"short_side_range=\(24, 40\) .* crop side 32 <= low",
        ),
        ("data.video.short_side_range", (40, 36), r"low <= high"),
        (
            "evals.val_multi_view.num_clips",
            0,
            r"config.evals.val_multi_view.num_clips=0 must be an integer >= 1",
        ),
        (
            "evals.val_multi_view.num_crops",
            0,
            r"config.evals.val_multi_view.num_crops=0 must be an integer >= 1",
        ),
        (
            "evals.val_multi_view.short_side",
            16,
            r"evals.val_multi_view.short_side=16 must be 0 \(the crop side\) or >= the crop",
        ),
        ("evals.val.short_side", 16, r"evals.val.short_side=16 must be 0 \(the crop side\)"),
    ],
)
def test_config_bad_video_values(key, value, message):
    _valid(_video_config())  # the base of each case is valid
    with pytest.raises(ValueError, match=message):
        _valid(_video_config(**{key: value}))


def test_config_video_keys_are_known_and_models_must_fit_the_dataset_task(tmp_path):
    from dnl_jax.train.trainer import train_and_evaluate

    config = _video_config()
    config.data.clip_length = 8
    with pytest.raises(ValueError, match=r"'data.clip_length'.*Did you mean data.video.clip_len"):
        _valid(config)
    # Checked before any data is read or anything written.
    with pytest.raises(
        ValueError,
        match="'dnl_tiny' is a segmentation model but config.data.name"
        "='kinetics' is a video dataset",
    ):
        train_and_evaluate(
            _video_config(**{"model.name": "dnl_tiny", "batch_size": 4}), str(tmp_path / "run")
        )
    on_images = base_config()
    on_images.model.name = "dnl_i3d_tiny"
    with pytest.raises(ValueError, match="'dnl_i3d_tiny' is a video model"):
        train_and_evaluate(on_images, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")
