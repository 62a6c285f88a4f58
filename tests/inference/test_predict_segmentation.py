"""predict on PNG files of synthetic scenes: the evaluator's labels, the record the trainer
writes (and the one derived from config.json for older runs), label PNGs with palette, overlays,
slide inference."""

import json
import os
import shutil

import jax
import numpy as np
from conftest import scene_rgb, val_scenes, write_scene_pngs
from PIL import Image

from dnl_jax import tasks
from dnl_jax.cli import predict as predict_cli
from dnl_jax.inference import Predictor, record_from_config
from dnl_jax.inference.record import RECORD_FILE, find_record
from dnl_jax.train import step as step_lib
from dnl_jax.train.checkpoint import load_variables


def _record(config):
    """The record the trainer writes for `config` (its task resolved as `tasks.build` does)."""
    return record_from_config(config, tasks.for_dataset(config.data.name))


COUNT = 4


def _evaluator_confusion(config, variables, images, labels):
    """The batched evaluator's eval step (argmax of the model's logits against `labels`)."""
    bundle = tasks.build(config).bundle
    state = step_lib.TrainState(
        step=0,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=None,
        rng=None,
    )
    batch = {"image": np.asarray(images, np.float32), "label": np.asarray(labels, np.int32)}
    sums = jax.jit(step_lib.make_eval_step(bundle))(state, batch)
    return np.asarray(sums["confusion"])


def test_trainer_writes_the_record(trained_run):
    workdir, config = trained_run
    with open(os.path.join(workdir, RECORD_FILE)) as file:
        saved = json.load(file)
    assert saved["mean"] == [127.5] * 3 and saved["std"] == [63.75] * 3  # (rgb - 0.5) / 0.25
    assert saved["resize"] == {"policy": "none"} and saved["task"] == "segmentation"
    assert saved["class_names"][:3] == ["background", "dark beacon", "light beacon"]
    assert find_record(os.path.join(workdir, "checkpoints", "300")) == _record(config)


def test_predict_on_pngs_reproduces_the_evaluator_labels(trained_run, tmp_path):
    workdir, config = trained_run
    paths = write_scene_pngs(config, tmp_path / "in", COUNT)
    out = tmp_path / "out"
    args = [*paths, "--checkpoint", f"{workdir}/checkpoints", "--output_dir", str(out)]
    assert predict_cli.main([*args, "--no_progress_bar"]) == 0
    labels = np.stack([np.asarray(Image.open(out / f"scene{i}_labels.png")) for i in range(COUNT)])
    assert labels.shape == (COUNT, 32, 32) and labels.max() < 5
    # The evaluator on the very pixels of the PNGs agrees on every pixel: its confusion matrix
    # against predict's labels is diagonal.
    scenes = val_scenes(config)
    pixels = np.stack([scene_rgb(scenes[i]["image"]) for i in range(COUNT)])
    variables = load_variables(f"{workdir}/checkpoints/300")
    confusion = _evaluator_confusion(config, variables, (pixels - 127.5) / 63.75, labels)
    assert confusion.sum() == labels.size and np.trace(confusion) == labels.size
    # On the drawn float scenes, before the PNG's 8-bit rounding and its clipping to [0, 1]
    # (the noise takes the white beacon and dark outlines out of range), most pixels agree
    # (measured 98.97 % on these 4 scenes): the PNG is a slightly different image.
    drawn = np.stack([scenes[i]["image"] for i in range(COUNT)])
    confusion = _evaluator_confusion(config, variables, drawn, labels)
    assert np.trace(confusion) / labels.size >= 0.97
    # Label PNGs carry the record's palette; overlays are RGB at the image's size.
    record = find_record(f"{workdir}/checkpoints/300")
    palette = np.asarray(Image.open(out / "scene0_labels.png").getpalette()[:15]).reshape(5, 3)
    np.testing.assert_array_equal(palette, np.asarray(record.palette))
    overlay = np.asarray(Image.open(out / "scene0_overlay.png"))
    assert overlay.shape == (32, 32, 3)
    assert not [name for name in os.listdir(out) if name.startswith(".partial")]


def test_old_checkpoint_record_derived_from_config_json(trained_run, tmp_path):
    workdir, _ = trained_run
    old = tmp_path / "old_run"
    shutil.copytree(workdir, old)
    os.remove(old / RECORD_FILE)  # saved before the record existed: config.json is there
    derived = Predictor.from_checkpoint(str(old / "checkpoints"))
    assert derived.record.source == "derived from config.json"
    image = np.array(Image.new("RGB", (40, 24), (115, 115, 115)))
    image[4:12, 4:12] = 255
    recorded = Predictor.from_checkpoint(f"{workdir}/checkpoints")
    np.testing.assert_array_equal(derived.predict(image).labels, recorded.predict(image).labels)


def test_slide_inference_and_batches(trained_run, tmp_path):
    workdir, config = trained_run
    predictor = Predictor.from_checkpoint(f"{workdir}/checkpoints/300")
    scenes = val_scenes(config)
    images = [scene_rgb(scenes[i]["image"]) for i in range(3)]
    whole = predictor.predict_batch(images)
    singles = [predictor.predict(image) for image in images]
    for a, b in zip(whole, singles, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    # A window covering the whole image is whole-image inference.
    covering = predictor.predict(images[0], mode="slide", crop_size=(32, 32), stride=(16, 16))
    np.testing.assert_allclose(covering.scores, whole[0].scores, atol=1e-5)
    # Four overlapping 16×16 windows: a prediction at the image's size, mostly the whole one's.
    slid = predictor.predict(images[0], mode="slide", crop_size=(16, 16), stride=(8, 8))
    assert slid.labels.shape == (32, 32)
    # A larger photo (not square) comes back at its own size.
    big = np.asarray(Image.fromarray(images[1]).resize((80, 48)))
    assert predictor.predict(big).labels.shape == (48, 80)
