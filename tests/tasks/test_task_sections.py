"""Per-task sections of `config.data` fail closed: an override of a section the run does not
read is an error naming the active task, config.json records only the sections read, the flat
keys of the earlier layout name their new keys, and a command-line override of a key that is
not one is one line (before ml_collections parses it)."""

import os
import re
import subprocess
import sys

import pytest

from dnl_jax import tasks
from dnl_jax.cli.flags import check_override_flags
from dnl_jax.recipes import coco_mask_rcnn, segmentation_recipe
from dnl_jax.train.config import base_config, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cityscapes():
    return segmentation_recipe(
        dataset="cityscapes",
        model="dnl_r50-d8",
        crop_size=(512, 1024),
        base_size=(2048, 1024),
        batch_size=8,
        total_steps=80,
        pretrained="resnet50_v1c",
    )


@pytest.mark.parametrize(
    "make, key, value, task, reads",
    [
        (cityscapes, "detection.canvas", (64, 64), "segmentation", "config.data.segmentation"),
        (cityscapes, "synthetic.image_size", 48, "segmentation", "config.data.segmentation"),
        (
            lambda: coco_mask_rcnn("mask_rcnn_r50_fpn"),
            "video.clip_len",
            8,
            "detection",
            "config.data.detection",
        ),
        (base_config, "segmentation.crop_size", (64, 64), "segmentation", "config.data.synthetic"),
    ],
)
def test_an_override_of_a_section_the_run_does_not_read_names_the_task(
    make, key, value, task, reads
):
    config = make()
    validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    config.update_from_flattened_dict({f"data.{key}": value})
    with pytest.raises(
        ValueError,
        match=rf"config.data.{key}=.* is not read by this run: "
        rf"config.data.name='{config.data.name}' is a {task} dataset, which "
        rf"reads {reads}; remove the override",
    ):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)


def test_synthetic_detection_refuses_the_segmentation_scenes_keys():
    from dnl_jax.recipes.ablation import synthetic_detection_config

    config = synthetic_detection_config()
    validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    config.data.synthetic.scenes = "regions"
    with pytest.raises(
        ValueError,
        match="config.data.synthetic.scenes='regions' is read by the segmentation scenes only",
    ):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)


def test_config_json_records_only_the_sections_the_run_reads():
    for config, section in (
        (base_config(), "synthetic"),
        (cityscapes(), "segmentation"),
        (coco_mask_rcnn("mask_rcnn_r50_fpn"), "detection"),
    ):
        recorded = tasks.applicable(config, tasks.for_dataset(config.data.name)).to_dict()["data"]
        assert set(recorded) & set(tasks.data_sections()) == {section}
        assert recorded[section] == config.data[section].to_dict()
        assert recorded["name"] == config.data.name  # the common keys stay
    assert "detection" in base_config().data  # the copy is trimmed, not the config


@pytest.mark.parametrize(
    "old, new",
    [
        (
            "data.crop_size",
            "config.data.segmentation.crop_size (segmentation) or "
            "config.data.video.crop_size (video)",
        ),
        ("data.canvas", "config.data.detection.canvas (detection)"),
        ("data.num_train", "config.data.synthetic.num_train (synthetic)"),
        ("eval_every_steps", "config.evals.<name>.every_steps"),
    ],
)
def test_old_keys_name_their_new_key_in_configs_and_on_the_command_line(old, new):
    config = base_config()
    with config.unlocked():
        config.update_from_flattened_dict({"data.name": "synthetic"})
        parent, _, leaf = f"config.{old}".rpartition(".")
        (config.data if parent == "config.data" else config)[leaf] = 1
    expected = re.escape(f"config.{old} is no longer a key; use {new}.")
    with pytest.raises(ValueError, match=expected):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    with pytest.raises(ValueError, match=expected):
        check_override_flags([f"--config.{old}=5"])


def test_command_line_checks_pass_known_keys_and_free_form_sections():
    check_override_flags(
        [
            "--config",
            "x.py",
            "--config.data.video.clip_len=4",
            "--config.evals.val.every_steps=5",
            "--config.model.kwargs.aux=False",
            "--workdir",
            "/tmp/x",
        ]
    )
    with pytest.raises(
        ValueError,
        match=r"unknown config key 'data.segmentation.crop'. Did you "
        r"mean data.segmentation.crop_size",
    ):
        check_override_flags(["--config.data.segmentation.crop=(8,8)"])


def test_the_trainer_command_refuses_a_replaced_key_in_one_line(tmp_path):
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.train",
        "--config",
        os.path.join(REPO, "experiments", "configs", "synthetic_dnl_tiny.py"),
        "--workdir",
        str(tmp_path),
        "--config.eval_every_steps=5",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "main: config.eval_every_steps is no longer a key; use config.evals.<name>.every_steps."
    ]
    assert not os.listdir(tmp_path)  # nothing started
