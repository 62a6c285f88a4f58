"""Every recipe config loads, and its file name agrees with what it configures."""

import glob
import importlib.util
import os
import re

import pytest

from dnl_jax import recipes, tasks
from dnl_jax.evaluators.segmentation import inference_settings
from dnl_jax.train.config import validate_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")
SEGMENTATION = (
    r"^(cityscapes|ade20k|pascal_context)_(dnl|nl|fcn)_(r50|r101)-d8_(\d+)x(\d+)_(\d+)k(_ohem)?$"
)
RECIPE_FILES = sorted(
    p
    for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if re.match(SEGMENTATION, os.path.basename(p)[:-3])
    or os.path.basename(p).startswith("kinetics_")
)


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_published_recipe_configs_exist():
    names = {os.path.basename(p)[:-3] for p in RECIPE_FILES}
    for required in (
        "cityscapes_dnl_r50-d8_512x1024_80k",
        "cityscapes_dnl_r101-d8_512x1024_80k",
        "cityscapes_dnl_r101-d8_769x769_60k_ohem",
        "ade20k_dnl_r101-d8_512x512_160k",
        "pascal_context_dnl_r101-d8_520x520_30k",
        "kinetics_dnl_i3d_r50_32x2",
    ):
        assert required in names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_config_matches_its_name(path):
    module = load(path)
    config = module.get_config()
    name = os.path.basename(path)[:-3]
    assert f"--config experiments/configs/{name}.py" in module.__doc__
    validate_config(
        config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1
    )  # the trainer's schema
    if name.startswith("kinetics_"):
        assert config.model.name == name[len("kinetics_") :].rsplit("_", 1)[0]
        assert config.data.video.clip_len * config.data.video.frame_stride == 64
        return
    dataset, head, depth, crop_h, crop_w, steps, ohem = re.match(SEGMENTATION, name).groups()
    assert config.data.name == dataset
    assert config.model.name == f"{head}_{depth}-d8"
    assert config.data.num_classes == recipes.NUM_CLASSES[dataset]
    assert tuple(config.data.segmentation.crop_size) == (int(crop_h), int(crop_w))
    assert config.total_steps == int(steps) * 1000
    official = bool(ohem) or dataset == "pascal_context"  # the official DNL code's recipes
    assert config.optimizer.poly_power == 0.9
    assert config.optimizer.min_lr == (0.0 if ohem else 1e-4)  # official lambda_poly ends at 0
    assert config.model.pretrained == (
        "deepbase_resnet101" if official else recipes.mmseg_backbone(config.model.name)
    )
    assert config.model.kwargs.loss_normalizer == ("kept" if official else "all")
    assert bool(ohem) == ("ohem" in config.model.kwargs)
    settings = inference_settings(config.evals.val)
    if settings["mode"] == "slide":
        assert all(s <= c for s, c in zip(settings["stride"], settings["crop_size"], strict=False))
    else:
        assert settings["crop_size"] is None and settings["stride"] is None


# Evaluation protocol and weight decay of each recipe, checked against its source: mmseg's
# dnl 512x1024 configs (test_cfg mode 'whole' from _base_/models/dnl_r50-d8.py), its 769x769
# configs (slide 769 stride 513), ADE20K 512x512 (whole), the official DNL code's Cityscapes
# conf (sscrop_test: 769 windows every int(769 * 0.667) = 512 pixels of the 2048x1024 image)
# and its PASCAL-Context-59 conf (min side 520, whole-image val, weight decay 1e-4).
PROTOCOLS = {
    "cityscapes_dnl_r101-d8_512x1024_80k": ("whole", None, None, (2048, 1024), 5e-4),
    "cityscapes_dnl_r101-d8_769x769_60k_ohem": (
        "slide",
        (769, 769),
        (512, 512),
        (2048, 1024),
        5e-4,
    ),
    "cityscapes_dnl_r50-d8_769x769_40k": ("slide", (769, 769), (513, 513), (2049, 1025), 5e-4),
    "ade20k_dnl_r101-d8_512x512_160k": ("whole", None, None, (2048, 512), 5e-4),
    "pascal_context_dnl_r101-d8_520x520_30k": ("whole", None, None, (1040, 520), 1e-4),
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_recipe_evaluation_protocol_matches_its_source(name):
    config = load(os.path.join(CONFIG_DIR, name + ".py")).get_config()
    settings = inference_settings(config.evals.val)
    mode, crop, stride, base_size, weight_decay = PROTOCOLS[name]
    assert (settings["mode"], settings["crop_size"], settings["stride"]) == (mode, crop, stride)
    assert tuple(config.data.segmentation.base_size) == base_size
    assert config.optimizer.weight_decay == weight_decay


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        recipes.segmentation_recipe(
            dataset="coco",
            model="dnl_r50-d8",
            crop_size=(8, 8),
            base_size=(8, 8),
            batch_size=1,
            total_steps=1,
            pretrained="resnet50_v1c",
        )


def test_no_real_data_recipe_trains_from_scratch_and_every_backbone_is_published():
    from dnl_jax.train.initialisation import BACKBONES

    for path in RECIPE_FILES:
        config = load(path).get_config()
        spec = BACKBONES[config.model.pretrained]
        assert not config.model.from_scratch and spec.url.startswith("https://")
        assert f"python -m dnl_jax.cli.pretrained {spec.name} {spec.file}" in load(path).__doc__


def test_official_cityscapes_recipe_follows_the_official_conf():
    """configs/seg/cityscapes/NLin_fcn_cityscapes_seg.conf and its run script (see the
    recipe): class weights, OHEM, loss normaliser, block, stem, resize and crop checks."""
    config = load(
        os.path.join(CONFIG_DIR, "cityscapes_dnl_r101-d8_769x769_60k_ohem.py")
    ).get_config()
    kwargs = config.model.kwargs
    assert tuple(kwargs.class_weights) == recipes.OFFICIAL_CITYSCAPES_CLASS_WEIGHTS
    assert len(kwargs.class_weights) == recipes.NUM_CLASSES["cityscapes"]
    assert dict(kwargs.ohem) == {"thresh": 0.7, "min_kept": 100_000 // 2}  # per image
    assert (kwargs.head, kwargs.stem_channels, kwargs.align_corners) == ("dnl_official", 128, True)
    assert (config.batch_size, config.total_steps, config.data.segmentation.cat_max_ratio) == (
        8,
        60_000,
        1.0,
    )
    assert (config.optimizer.lr, config.optimizer.weight_decay) == (0.01, 5e-4)
