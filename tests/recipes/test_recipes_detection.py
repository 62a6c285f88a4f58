"""The COCO Mask R-CNN recipes (experiments/configs/coco_mask_rcnn_*): valid for the trainer,
named after their model, the official schedule in steps, a published backbone with its
conversion command, and frozen-parameter prefixes that exist in the real R50-FPN."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest
from test_recipes import load  # a config file as a module

from dnl_jax import recipes, tasks
from dnl_jax.tasks import get_model
from dnl_jax.train import optimizer as optimizer_lib
from dnl_jax.train.config import validate_config
from dnl_jax.train.initialisation import BACKBONES

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")
COCO_RECIPES = sorted(glob.glob(os.path.join(CONFIG_DIR, "coco_mask_rcnn_*.py")))
# recipe → (registry model, official config's published val2017 box / mask AP in the docstring)
EXPECTED = {
    "coco_mask_rcnn_r50_fpn_1x": ("mask_rcnn_r50_fpn", "38.8 / 35.1"),
    "coco_mask_rcnn_r50_fpn_nl_c4_1x": ("mask_rcnn_r50_fpn_nl_c4", "39.6 / 35.8"),
    "coco_mask_rcnn_r50_fpn_gc_c4_1x": ("mask_rcnn_r50_fpn_gc_c4", "40.1 / 36.2"),
    "coco_mask_rcnn_r50_fpn_dnl_c4_1x": ("mask_rcnn_r50_fpn_dnl_c4", "40.3 / 36.4"),
    "coco_mask_rcnn_r50_fpn_dnl_c4c5_1x": ("mask_rcnn_r50_fpn_dnl_c4c5", "41.2 / 37.2"),
}


def test_every_published_row_has_a_recipe():
    assert sorted(os.path.basename(p)[:-3] for p in COCO_RECIPES) == sorted(EXPECTED)


@pytest.mark.parametrize("path", COCO_RECIPES, ids=lambda p: os.path.basename(p)[:-3])
def test_recipe_is_valid_and_follows_the_official_schedule(path):
    module, name = load(path), os.path.basename(path)[:-3]
    config = module.get_config()
    validate_config(config, tasks.for_dataset(config.data.name), num_devices=8, num_processes=1)
    model, published = EXPECTED[name]
    assert config.model.name == model and published in " ".join(module.__doc__.split())
    assert f"--config experiments/configs/{name}.py" in module.__doc__
    spec = BACKBONES[config.model.pretrained]
    assert f"python -m dnl_jax.cli.pretrained {spec.name} {spec.file}" in module.__doc__
    epoch = -(-recipes.COCO_TRAIN_IMAGES // config.batch_size)
    assert config.total_steps == 12 * epoch
    assert tuple(config.optimizer.decay_steps) == (8 * epoch, 11 * epoch)
    assert config.optimizer.lr == pytest.approx(0.02 * config.batch_size / 16)
    assert (config.optimizer.warmup_steps, config.optimizer.grad_clip_norm) == (500, 35.0)
    assert (config.data.num_classes, tuple(config.data.detection.base_size)) == (80, (1333, 800))
    assert config.evals.val.type == "coco"


def test_frozen_prefixes_exist_in_the_real_detector_and_freeze_stem_and_res2():
    config = recipes.coco_mask_rcnn("mask_rcnn_r50_fpn_dnl_c4")
    bundle = get_model(config.model.name, 80, **config.model.kwargs.to_dict())
    variables = jax.eval_shape(
        lambda: bundle.init_fn({"params": jax.random.key(0)}, jnp.zeros((1, 64, 64, 3)))
    )
    labels = optimizer_lib._frozen_labels(
        variables["params"], tuple(config.optimizer.frozen)
    )  # raises on a bad prefix
    flat = {
        jax.tree_util.keystr(path): label
        for path, label in jax.tree_util.tree_leaves_with_path(labels)
    }
    stem_and_res2 = ("['backbone']['conv1']", "['backbone']['bn1']", "['backbone']['layer1_")
    for path, label in flat.items():
        assert (label == "frozen") == path.startswith(stem_and_res2), path
    assert any(path.startswith("['backbone']['layer1_2']") for path in flat)
    assert any("['layer3_4']['dnl_official_block']" in path for path in flat)  # c4: block n-2


def test_detection_docs_list_every_recipe_with_its_published_target():
    import re

    page = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "detection.md")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    rows = dict(re.findall(r"^\| (coco_mask_rcnn_\S+) \| ([\d.]+ / [\d.]+) \|", text, re.M))
    assert rows == {name: target for name, (_, target) in EXPECTED.items()}
