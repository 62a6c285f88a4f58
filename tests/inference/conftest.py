"""The inference tests' shared checkpoint: the tiny DNL segmentor trained briefly on the beacon
scenes (32×32, 5 classes, 300 steps: about 30 s on 2 CPU cores), once per session, and the
helpers that write a scene as a PNG as a user's photo would be."""

import os

import numpy as np
import pytest
from PIL import Image
from train_testing import enable_compilation_cache, tiny_config

from dnl_jax.data.synthetic import NORMALISATION_MEAN, NORMALISATION_STD, SyntheticSegmentation
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()
# Short, but long enough for the unary term to find the beacon (measured: its mass on the beacon
# 0.075 at step 50, 0.097 at 100, 0.096 at 300 against an area share of 0.0625).
TRAINED = {
    "total_steps": 300,
    "batch_size": 16,
    "data.synthetic.num_train": 2048,
    "optimizer.lr": 0.1,
    "optimizer.warmup_steps": 10,
    "evals.val.batch_size": 16,
    "evals.val.every_steps": 300,
    "checkpoint.every_steps": 300,
}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(workdir, config) of the briefly trained tiny DNL segmentor."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    config = tiny_config(**TRAINED)
    result = train_and_evaluate(config, workdir)
    assert result["status"] == "completed"
    return workdir, config


def scene_rgb(image: np.ndarray) -> np.ndarray:
    """A drawn (normalised) scene `[S, S, 3]` as the uint8 RGB a PNG of it holds."""
    rgb = np.clip(image * NORMALISATION_STD + NORMALISATION_MEAN, 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def val_scenes(config) -> SyntheticSegmentation:
    drawn = config.data.synthetic
    return SyntheticSegmentation(
        int(drawn.num_val),
        image_size=int(drawn.image_size),
        num_classes=int(config.data.num_classes),
        split="val",
        seed=int(config.data.seed),
        noise=float(drawn.noise),
    )


def write_scene_pngs(config, directory, count: int) -> list[str]:
    """The first `count` val scenes as PNG files in `directory`."""
    os.makedirs(directory, exist_ok=True)
    scenes, paths = val_scenes(config), []
    for index in range(count):
        path = os.path.join(directory, f"scene{index}.png")
        Image.fromarray(scene_rgb(scenes[index]["image"])).save(path)
        paths.append(path)
    return paths
