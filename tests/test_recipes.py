"""Every recipe config loads, and its file name agrees with what it configures."""

import glob
import importlib.util
import os
import re

import pytest

from dnl_jax import recipes
from dnl_jax.evaluators.segmentation import inference_settings
from dnl_jax.train.config import validate_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
SEGMENTATION = r"^(cityscapes|ade20k|pascal_context)_(dnl|nl|fcn)_(r50|r101)-d8_(\d+)x(\d+)_(\d+)k(_ohem)?$"
RECIPE_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                      if re.match(SEGMENTATION, os.path.basename(p)[:-3])
                      or os.path.basename(p).startswith("kinetics_"))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_issue_configs_exist():
    names = {os.path.basename(p)[:-3] for p in RECIPE_FILES}
    for required in ("cityscapes_dnl_r50-d8_512x1024_80k", "cityscapes_dnl_r101-d8_512x1024_80k",
                     "cityscapes_dnl_r101-d8_769x769_60k_ohem", "ade20k_dnl_r101-d8_512x512_160k",
                     "pascal_context_dnl_r101-d8_520x520_30k", "kinetics_dnl_i3d_r50_32x2"):
        assert required in names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_config_matches_its_name(path):
    module = load(path)
    config = module.get_config()
    name = os.path.basename(path)[:-3]
    assert f"--config experiments/configs/{name}.py" in module.__doc__
    validate_config(config, num_devices=1, num_processes=1)  # the trainer's schema
    if name.startswith("kinetics_"):
        assert config.model.name == name[len("kinetics_"):].rsplit("_", 1)[0]
        assert config.data.clip_len * config.data.frame_stride == 64
        return
    dataset, head, depth, crop_h, crop_w, steps, ohem = re.match(SEGMENTATION, name).groups()
    assert config.data.name == dataset
    assert config.model.name == f"{head}_{depth}-d8"
    assert config.data.num_classes == recipes.NUM_CLASSES[dataset]
    assert tuple(config.data.crop_size) == (int(crop_h), int(crop_w))
    assert config.total_steps == int(steps) * 1000
    assert (config.optimizer.poly_power, config.optimizer.min_lr) == (0.9, 1e-4)
    assert bool(ohem) == ("ohem" in config.model.kwargs)
    settings = inference_settings(config.evals.val)
    if settings["mode"] == "slide":
        assert all(s <= c for s, c in zip(settings["stride"], settings["crop_size"]))
    else:
        assert settings["crop_size"] is None and settings["stride"] is None


# Evaluation protocol and weight decay of each recipe, checked against its source: mmseg's
# dnl 512x1024 configs (test_cfg mode 'whole' from _base_/models/dnl_r50-d8.py), its 769x769
# configs (slide 769 stride 513), ADE20K 512x512 (whole), and the official DNL code's
# PASCAL-Context-59 conf (min side 520, whole-image val, weight decay 1e-4).
PROTOCOLS = {
    "cityscapes_dnl_r101-d8_512x1024_80k": ("whole", None, None, (2048, 1024), 5e-4),
    "cityscapes_dnl_r101-d8_769x769_60k_ohem": ("slide", (769, 769), (513, 513), (2049, 1025),
                                                5e-4),
    "ade20k_dnl_r101-d8_512x512_160k": ("whole", None, None, (2048, 512), 5e-4),
    "pascal_context_dnl_r101-d8_520x520_30k": ("whole", None, None, (1040, 520), 1e-4),
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_recipe_evaluation_protocol_matches_its_source(name):
    config = load(os.path.join(CONFIG_DIR, name + ".py")).get_config()
    settings = inference_settings(config.evals.val)
    mode, crop, stride, base_size, weight_decay = PROTOCOLS[name]
    assert (settings["mode"], settings["crop_size"], settings["stride"]) == (mode, crop, stride)
    assert tuple(config.data.base_size) == base_size
    assert config.optimizer.weight_decay == weight_decay


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        recipes.segmentation_recipe(dataset="coco", model="dnl_r50-d8", crop_size=(8, 8),
                                    base_size=(8, 8), batch_size=1, total_steps=1)
