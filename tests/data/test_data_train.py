"""End to end on prepared fixtures: raw files → prepare → load_split → grain + augmentation →
one training step of a tiny model (the trainer's step) → checkpoint → the evaluate command."""

import os
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from data_fixtures import H, W, write_ade20k, write_cityscapes, write_video, write_voc
from PIL import Image

from dnl_jax import recipes
from dnl_jax.data import cityscapes, load_split, transforms
from dnl_jax.data.prepare import prepare
from dnl_jax.tasks import get_model
from dnl_jax.train import step as step_lib
from dnl_jax.train.config import base_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _write_pascal_context(raw, rng):
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    write_voc(raw, rng, ids)
    masks = raw / "VOCdevkit" / "VOC2010" / "SegmentationClassContext"
    os.makedirs(masks)
    for image_id in sum(ids.values(), []):
        Image.fromarray(rng.integers(0, 60, (H, W)).astype(np.uint8)).save(
            masks / f"{image_id}.png"
        )


WRITERS = {
    "cityscapes": write_cityscapes,
    "ade20k": write_ade20k,
    "pascal_context": _write_pascal_context,
}


def make_trainer(model_name, num_classes, example_input):
    """(initial TrainState, jitted trainer step) for `model_name`; init is jitted too (faster
    than running the tiny model op by op on a loaded CPU)."""
    bundle = get_model(model_name, num_classes)
    opt = base_config().optimizer
    optimizer = step_lib.make_optimizer(opt, total_steps=10)
    init = jax.jit(
        lambda x: bundle.module.init(
            {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=True
        )
    )
    variables = init(jnp.asarray(example_input))
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(variables["params"]),
        rng=jax.random.key_data(jax.random.key(2)),
    )
    return state, jax.jit(
        step_lib.make_train_step(bundle, optimizer, step_lib.learning_rate_schedule(opt, 10))
    )


def check_one_step(state, train_step, batch):
    """One step on `batch`: finite loss, parameters moved."""
    new_state, metrics = train_step(state, jax.tree.map(jnp.asarray, batch))
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params, new_state.params
    )
    assert any(jax.tree.leaves(changed))


@pytest.fixture(scope="module")
def segmentation_trainer():
    """One compiled step shared by the three datasets: a 150-class head covers all their train
    ids (19, 150, 59), so the step compiles once instead of three times."""
    return make_trainer("dnl_tiny", max(recipes.NUM_CLASSES.values()), np.zeros((2, 16, 16, 3)))


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_one_training_step_on_each_prepared_dataset(tmp_path, dataset, segmentation_trainer):
    WRITERS[dataset](tmp_path / "raw", np.random.default_rng(0))
    prepare(dataset, str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    source = load_split(dataset, "train", str(tmp_path / "out"))
    augment = transforms.SegmentationTrainTransform(
        crop_size=(16, 16), base_size=(W, H), ratio_range=(1.0, 2.0)
    )
    stream = (
        grain.MapDataset.source(source)
        .shuffle(seed=0)
        .repeat()
        .random_map(augment, seed=0)
        .batch(2)
    )
    batch = stream[0]
    assert batch["image"].shape == (2, 16, 16, 3)
    assert batch["label"].max() < recipes.NUM_CLASSES[dataset] or batch["label"].max() == 255
    check_one_step(*segmentation_trainer, batch)


def test_one_video_training_step(tmp_path):
    for i, name in enumerate(("abseiling", "juggling")):
        write_video(tmp_path / "raw" / "train" / name / "a.mp4", (40 * i, 90, 200), frames=6)
        write_video(tmp_path / "raw" / "val" / name / "b.mp4", (40 * i, 90, 200), frames=6)
    prepare(
        "kinetics", str(tmp_path / "raw"), str(tmp_path / "out"), short_side=16, log=lambda _: 0
    )
    source = load_split("kinetics", "train", str(tmp_path / "out"))
    augment = transforms.VideoTrainTransform(
        clip_len=4, stride=1, crop_size=16, short_side_range=(16, 20)
    )
    batch = grain.MapDataset.source(source).random_map(augment, seed=0).batch(2)[0]
    assert batch["video"].shape == (2, 4, 16, 16, 3)
    check_one_step(*make_trainer("dnl_i3d_tiny", len(source.classes), batch["video"]), batch)


def tiny_cityscapes_recipe():
    """The mmseg Cityscapes recipe (2 steps) on the tiny model, from scratch on purpose."""
    config = recipes.cityscapes_mmseg("dnl_r50-d8", total_steps=2)
    config.model.update(name="dnl_tiny", pretrained="", from_scratch=True)
    return config


def test_evaluate_command_on_a_checkpoint_writes_cityscapes_pngs(tmp_path):
    write_cityscapes(tmp_path / "raw", np.random.default_rng(0))
    prepare("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    bundle = get_model("dnl_tiny", 19)
    variables = bundle.module.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)},
        jnp.zeros((1, 16, 16, 3)),
        train=True,
    )
    checkpoint = tmp_path / "checkpoints" / "1"
    ocp.PyTreeCheckpointer().save(
        checkpoint / "state",
        {"params": variables["params"], "batch_stats": variables["batch_stats"]},
    )
    config = os.path.join(ROOT, "experiments", "configs", "cityscapes_dnl_r50-d8_512x1024_80k.py")
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.evaluate",
        f"--config={config}",
        f"--checkpoint={checkpoint}",
        "--split=val",
        f"--output_dir={tmp_path / 'preds'}",
        "--config.model.name=dnl_tiny",
        f"--config.data.data_dir={tmp_path / 'out'}",
        f"--config.data.segmentation.base_size=({W},{H})",
        "--config.evals.val.mode=slide",
        "--config.evals.val.crop_size=(8,8)",
        "--config.evals.val.stride=(6,6)",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mIoU" in result.stdout and "traffic light" in result.stdout
    prediction = np.asarray(
        Image.open(tmp_path / "preds" / "frankfurt_000000_000294_leftImg8bit.png")
    )
    assert prediction.shape == (H, W)
    assert set(np.unique(prediction)) <= set(cityscapes.TRAIN_TO_LABEL.tolist())
    assert (tmp_path / "preds" / "metrics_val.json").exists()


def test_trainer_one_step_on_prepared_cityscapes_matches_the_evaluate_command(tmp_path):
    """train_and_evaluate on a prepared Cityscapes fixture (random resize/crop/flip to 16x16,
    slide evaluation per image); its final val metrics equal `evaluate_checkpoint` on the
    checkpoint it saved, so training-time and offline evaluation agree."""
    from dnl_jax.cli.evaluate import evaluate_checkpoint
    from dnl_jax.train.trainer import train_and_evaluate

    write_cityscapes(tmp_path / "raw", np.random.default_rng(0))
    prepare("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    config = tiny_cityscapes_recipe()
    config.update_from_flattened_dict(
        {
            "data.data_dir": str(tmp_path / "out"),
            "data.segmentation.crop_size": (16, 16),
            "data.segmentation.base_size": (W, H),
            "data.segmentation.ratio_range": (1.0, 2.0),
            "batch_size": 4,
            "evals.val.mode": "slide",
            "evals.val.crop_size": (8, 8),
            "evals.val.stride": (6, 6),
            "evals.val.every_steps": 100,
            "checkpoint.every_steps": 1,
            "log_every_steps": 1,
            "progress_bar": False,
            "curves_figure": False,
        }
    )
    result = train_and_evaluate(config, str(tmp_path / "run"))
    assert (result["status"], result["step"]) == ("completed", 2)
    # The attention figure is drawn from raw uint8 val images, resized and normalised first.
    assert result["attention"] and os.path.getsize(result["attention"]) > 0
    val = result["val"]
    assert 0.0 <= val["miou"] <= 1.0 and 0.0 <= val["pixel_accuracy"] <= 1.0
    offline = evaluate_checkpoint(
        config, str(tmp_path / "run" / "checkpoints" / "2"), "val", log=lambda _: 0
    )["val"]
    np.testing.assert_allclose(offline["per_class_iou"], val["per_class_iou"], equal_nan=True)


def test_trainer_says_how_to_prepare_a_missing_dataset(tmp_path):
    from dnl_jax.train.trainer import train_and_evaluate

    config = tiny_cityscapes_recipe()
    config.data.data_dir = str(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match="python -m dnl_jax.cli.prepare cityscapes"):
        train_and_evaluate(config, str(tmp_path / "run"))
