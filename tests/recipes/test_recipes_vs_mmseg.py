"""Our recipes held against the config files of the OpenMMLab wheels they come from.

mmseg 1.2.2 ships its configs in `mmseg/.mim/configs` and mmaction2 1.2.0 in
`mmaction/.mim/configs`; `mmengine.Config.fromfile` resolves their `_base_` chains. Every
mmseg-derived recipe (the Cityscapes and ADE20K `*_r{50,101}-d8_*` configs without `_ohem`;
the official-code recipes have no mmseg counterpart) is compared field by field; the video
recipes are compared with mmaction2's I3D non-local config on the settings both share with the
original non-local network. The wheels are installed by `make install`; without them this test
fails at import instead of skipping.
"""

import glob
import os
import re

import mmaction
import mmseg
import pytest
from mmengine import Config
from test_recipes import CONFIG_DIR, load

from dnl_jax import recipes, tasks
from dnl_jax.models import heads, registry

MMSEG_CONFIGS = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
MMACTION_CONFIGS = os.path.join(os.path.dirname(mmaction.__file__), ".mim", "configs")
MMSEG_HEADS = {
    "dnl": ("dnlnet", "dnl", "DNLHead"),
    "nl": ("nonlocal_net", "nonlocal", "NLHead"),
    "fcn": ("fcn", "fcn", "FCNHead"),
}
# Per-GPU batch and crop of mmseg's file names per dataset: 4 GPUs x 2 (Cityscapes), x 4 (ADE20K).
MMSEG_SCHEDULE = {"cityscapes": ("4xb2", "cityscapes"), "ade20k": ("4xb4", "ade20k")}
RECIPE = re.compile(r"^(cityscapes|ade20k)_(dnl|nl|fcn)_(r50|r101)-d8_(\d+x\d+)_(\d+)k$")
MMSEG_RECIPES = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if RECIPE.match(os.path.basename(p)[:-3])
)


def mmseg_config(recipe_name: str) -> tuple[Config, int]:
    """The wheel's config for our recipe, and its number of GPUs (from mmseg's file name)."""
    dataset, head, depth, crop, steps = RECIPE.match(recipe_name).groups()
    folder, prefix, _ = MMSEG_HEADS[head]
    gpus_batch, data_name = MMSEG_SCHEDULE[dataset]
    name = f"{prefix}_{depth}-d8_{gpus_batch}-{steps}k_{data_name}-{crop}.py"
    path = os.path.join(MMSEG_CONFIGS, folder, name)
    assert os.path.isfile(path), f"no mmseg config {folder}/{name} for {recipe_name}"
    return Config.fromfile(path), int(gpus_batch.split("x")[0])


def resolved_model_settings(config) -> dict:
    """The registry's settings of `config.model.name` with the recipe's overrides."""
    name = config.model.name
    return tasks.for_model(name).model_settings(
        name, registry.lookup(name)[1], config.model.kwargs.to_dict()
    )


def _pipeline_step(pipeline, kind: str) -> dict:
    steps = [step for step in pipeline if step["type"] == kind]
    assert len(steps) == 1, f"expected one {kind} in {pipeline}"
    return steps[0]


def test_every_mmseg_config_family_is_covered():
    assert len(MMSEG_RECIPES) == 13  # 5 ADE20K, 4 Cityscapes 512x1024, 4 Cityscapes 769x769
    for depth in ("r50", "r101"):
        for steps in ("40k", "80k"):
            assert f"cityscapes_dnl_{depth}-d8_769x769_{steps}" in MMSEG_RECIPES


@pytest.mark.parametrize("name", MMSEG_RECIPES)
def test_training_settings_match_mmseg(name):
    config = load(os.path.join(CONFIG_DIR, name + ".py")).get_config()
    mm, gpus = mmseg_config(name)
    assert mm.model.pretrained == f"open-mmlab://{config.model.pretrained}"
    assert not config.model.from_scratch
    crop = _pipeline_step(mm.train_pipeline, "RandomCrop")
    resize = _pipeline_step(mm.train_pipeline, "RandomResize")
    assert (
        tuple(config.data.segmentation.crop_size) == tuple(crop["crop_size"]) == tuple(mm.crop_size)
    )
    assert config.data.segmentation.cat_max_ratio == crop["cat_max_ratio"]
    assert tuple(config.data.segmentation.base_size) == tuple(resize["scale"])
    assert tuple(config.data.segmentation.ratio_range) == tuple(resize["ratio_range"])
    assert config.batch_size == gpus * mm.train_dataloader.batch_size
    assert config.total_steps == mm.train_cfg.max_iters
    optimizer = mm.optim_wrapper.optimizer
    assert optimizer.type == "SGD" and not optimizer.get("nesterov", False)
    assert (config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay) == (
        optimizer.lr,
        optimizer.momentum,
        optimizer.weight_decay,
    )
    assert mm.optim_wrapper.get("clip_grad") is None and config.optimizer.grad_clip_norm == 0
    (poly,) = mm.param_scheduler  # one PolyLR over the whole run, no warm-up
    assert poly.type == "PolyLR" and not poly.by_epoch
    assert (poly.begin, poly.end) == (0, config.total_steps)
    assert (config.optimizer.poly_power, config.optimizer.min_lr) == (poly.power, poly.eta_min)
    assert config.optimizer.warmup_steps == 0


@pytest.mark.parametrize("name", MMSEG_RECIPES)
def test_optimizer_paramwise_settings_match_mmseg(name):
    config = load(os.path.join(CONFIG_DIR, name + ".py")).get_config()
    mm, _ = mmseg_config(name)
    custom = mm.optim_wrapper.get("paramwise_cfg", {}).get("custom_keys", {})
    # What mmengine's DefaultOptimWrapperConstructor applies: it reads `decay_mult` (and
    # `lr_mult`) from custom keys and nothing else, so the 80k 769x769 DNL configs' `wd_mult`
    # changes nothing (test_mmengine_ignores_wd_mult shows it on mmengine itself).
    expected = {
        key: options["decay_mult"] for key, options in custom.items() if "decay_mult" in options
    }
    assert dict(config.optimizer.weight_decay_multipliers) == expected
    # mmengine matches custom keys as substrings of the parameter name; ours match the
    # '/'-joined path. theta/phi name exactly the DNL block's projections in both.
    for pattern in expected:
        assert "." not in pattern and "/" not in pattern


def test_mmengine_ignores_wd_mult():
    """The weight decay mmengine gives theta/phi under the 80k 769x769 DNL config's
    paramwise_cfg: the configured decay, as for any weight (`wd_mult` is not read)."""
    import torch
    from mmengine.optim import DefaultOptimWrapperConstructor

    mm, _ = mmseg_config("cityscapes_dnl_r50-d8_769x769_80k")
    paramwise = mm.optim_wrapper.paramwise_cfg.to_dict()
    assert paramwise["custom_keys"]["theta"] == {"wd_mult": 0.0}
    block = torch.nn.Module()
    block.theta, block.phi, block.g = (torch.nn.Conv2d(4, 2, 1) for _ in range(3))
    optim_cfg = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, weight_decay=5e-4))
    groups = DefaultOptimWrapperConstructor(optim_cfg, paramwise)(block).optimizer.param_groups
    assert len(groups) == 6 and all(group["weight_decay"] == 5e-4 for group in groups)


@pytest.mark.parametrize("name", MMSEG_RECIPES)
def test_model_and_test_settings_match_mmseg(name):
    config = load(os.path.join(CONFIG_DIR, name + ".py")).get_config()
    mm, _ = mmseg_config(name)
    settings = resolved_model_settings(config)
    decode, aux = mm.model.decode_head, mm.model.auxiliary_head
    head_type = MMSEG_HEADS[settings["head"]][2]
    assert decode.type == head_type
    assert mm.model.backbone.depth == settings["depth"]
    assert mm.model.backbone.dilations == (1, 1, 2, 4) and settings["output_stride"] == 8
    assert (decode.num_classes, aux.num_classes) == (config.data.num_classes,) * 2
    assert (decode.channels, aux.channels) == (settings["channels"], settings["aux_channels"])
    assert decode.dropout_ratio == aux.dropout_ratio == settings["dropout_rate"]
    assert (aux.num_convs, aux.concat_input) == (1, False)
    assert aux.loss_decode.loss_weight == settings["aux_weight"]
    assert decode.loss_decode.loss_weight == 1.0
    assert decode.loss_decode.get("class_weight") is None and settings["class_weights"] is None
    averaged_over_kept = decode.loss_decode.get("avg_non_ignore", False)
    assert settings["loss_normalizer"] == ("kept" if averaged_over_kept else "all")
    assert decode.align_corners == aux.align_corners == settings["align_corners"]
    assert decode.get("sampler") is None and settings["ohem"] is None
    if head_type in ("DNLHead", "NLHead"):
        block_head = heads.HEADS[settings["head"]]
        assert decode.reduction == block_head.reduction
        assert decode.use_scale == block_head.use_scale
        assert decode.mode == "embedded_gaussian"
        if head_type == "DNLHead":
            assert decode.get("temperature", 0.05) == block_head.temperature
    else:
        assert (decode.num_convs, decode.concat_input) == (
            heads.FCNHead.num_convs,
            heads.FCNHead.concat_input,
        )
    test_cfg = mm.model.test_cfg
    assert config.evals.val.mode == test_cfg.mode
    if test_cfg.mode == "slide":
        assert tuple(config.evals.val.crop_size) == tuple(test_cfg.crop_size)
        assert tuple(config.evals.val.stride) == tuple(test_cfg.stride)
    test_resize = _pipeline_step(mm.test_pipeline, "Resize")
    assert tuple(config.data.segmentation.base_size) == tuple(test_resize["scale"])
    assert tuple(config.evals.val.scales) == (1.0,) and not config.evals.val.flip


MMACTION_NL = os.path.join(
    MMACTION_CONFIGS,
    "recognition",
    "i3d",
    "i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py",
)


@pytest.mark.parametrize("name", ["kinetics_dnl_i3d_r50_32x2", "kinetics_nl_i3d_r50_32x2"])
def test_video_recipes_match_mmaction_nonlocal_i3d(name):
    """Settings shared by mmaction2's I3D non-local config and the original non-local network.
    Not compared, because ours follow the original paper instead: the lr schedule (mmaction:
    steps at epochs 40, 80; original: steps; ours: poly), gradient clipping (mmaction 40), the
    train crop (mmaction MultiScaleCrop; original and ours: short side U[256, 320], 224 crop),
    the stem's temporal strides and the test crop size (mmaction 256, ours 224)."""
    from dnl_jax.models.video import every_other_block, i3d_inflated_blocks

    config = load(os.path.join(CONFIG_DIR, name + ".py")).get_config()
    mm = Config.fromfile(MMACTION_NL)
    backbone = mm.model.backbone
    settings = resolved_model_settings(config)
    assert backbone.pretrained == "torchvision://resnet50" and backbone.pretrained2d
    assert config.model.pretrained == "torchvision_resnet50" and not config.model.from_scratch
    assert backbone.depth == settings["depth"] == 50
    blocks_per_stage = [len(stage) for stage in backbone.inflate]
    inflated = i3d_inflated_blocks(blocks_per_stage)
    assert [
        tuple(int(i in s) for i in range(n))
        for s, n in zip(inflated, blocks_per_stage, strict=False)
    ] == [tuple(s) for s in backbone.inflate]
    chosen = every_other_block(blocks_per_stage)
    assert [
        tuple(int(i in s) for i in range(n)) for s, n in zip(chosen, blocks_per_stage, strict=False)
    ] == [tuple(s) for s in backbone.non_local]
    assert backbone.non_local_cfg.sub_sample and settings["inflation"] == "i3d"
    assert mm.model.cls_head.dropout_ratio == settings["dropout_rate"]
    sample = _pipeline_step(mm.train_pipeline, "SampleFrames")
    assert (config.data.video.clip_len, config.data.video.frame_stride) == (
        sample.clip_len,
        sample.frame_interval,
    )
    gpus = int(re.search(r"_(\d+)xb(\d+)-", MMACTION_NL).group(1))
    assert config.batch_size == gpus * mm.train_dataloader.batch_size == 64
    optimizer = mm.optim_wrapper.optimizer
    assert (config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay) == (
        optimizer.lr,
        optimizer.momentum,
        optimizer.weight_decay,
    )
    test_sample = _pipeline_step(mm.test_pipeline, "SampleFrames")
    assert config.evals.val_multi_view.num_clips == test_sample.num_clips == 10
    assert (
        _pipeline_step(mm.test_pipeline, "ThreeCrop") and config.evals.val_multi_view.num_crops == 3
    )
    assert tuple(_pipeline_step(mm.test_pipeline, "Resize").scale) == (
        -1,
        config.evals.val_multi_view.short_side,
    )


def test_official_recipes_are_not_held_to_mmseg():
    """The official-code recipes differ from mmseg on purpose; their values are checked against
    the official confs in test_recipes.py."""
    names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))}
    official = {"cityscapes_dnl_r101-d8_769x769_60k_ohem"} | {
        n for n in names if n.startswith("pascal_context_")
    }
    assert official <= names and not official & set(MMSEG_RECIPES)
    assert recipes.OFFICIAL_CITYSCAPES_CLASS_WEIGHTS[0] == 0.8373


# The targets table of the datasets page (the README links to it).
TARGETS_PAGE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "datasets.md")
METAFILE_ROW = re.compile(r"^\| (\S+) \| ([\d.]+) \| mmseg 1\.2\.2 metafile `([^`]+)` \|")


def test_documented_targets_are_the_mmseg_metafile_numbers():
    import yaml

    with open(TARGETS_PAGE, encoding="utf-8") as f:
        rows = [m.groups() for line in f if (m := METAFILE_ROW.match(line))]
    assert {row[0] for row in rows} == set(MMSEG_RECIPES)  # one sourced row per mmseg recipe
    for recipe_name, target, mmseg_name in rows:
        folder = MMSEG_HEADS[RECIPE.match(recipe_name).group(2)][0]
        with open(os.path.join(MMSEG_CONFIGS, folder, "metafile.yaml")) as f:
            metafile = yaml.safe_load(f)
        (entry,) = [m for m in metafile["Models"] if m["Name"] == mmseg_name]
        results = entry["Results"] if isinstance(entry["Results"], list) else [entry["Results"]]
        assert float(target) == results[0]["Metrics"]["mIoU"], recipe_name
        mm, _ = mmseg_config(recipe_name)  # the row's recipe is that config
        assert os.path.basename(entry["Config"])[:-3] == mmseg_name
        assert mm.filename.endswith(entry["Config"].split("configs/")[-1])
