"""Pretrained backbones: converting files in the open-mmlab, torchvision and official deep-base
layouts (tiny state_dicts made here), loading them into segmentors and (inflated) video models,
the refusal to start without them, and a training run that starts from one."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from train_testing import enable_compilation_cache, tiny_config

from dnl_jax.interop import mapping
from dnl_jax.interop import pretrained as convert_cli
from dnl_jax.interop.segmentor import mmseg_rename
from dnl_jax.models.resnet import ResNetV1c
from dnl_jax.models.resnet_v1b import ResNetV1b
from dnl_jax.tasks import get_model
from dnl_jax.train import initialisation
from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.trainer import train_and_evaluate

MARKED_SCALE = 3.0  # every BN scale of the made-up ImageNet weights (fresh models have 1.0)


def _shapes(module, shape) -> dict:
    """The module's variables as zeros of the right shapes (no initialiser compiled)."""
    template = mapping.template_of(module, jnp.zeros(shape))
    return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), template)


def _save_backbone(module, path) -> tuple[dict, dict]:
    """Random backbone variables (BN scales MARKED_SCALE) saved as a PyTorch state_dict with an
    ImageNet classifier `fc.*`; returns (variables, state_dict)."""
    rng = np.random.default_rng(7)
    flat = traverse_util.flatten_dict(_shapes(module, (1, 32, 32, 3)))
    for key, value in flat.items():
        if key[-1] == "scale":
            flat[key] = np.full_like(value, MARKED_SCALE)
        else:
            flat[key] = (
                rng.uniform(0.5, 1.5, value.shape)
                if key[0] == "batch_stats"
                else rng.normal(0.0, 0.1, value.shape)
            ).astype(value.dtype)
    variables = traverse_util.unflatten_dict(flat)
    state_dict = mapping.flax_to_torch_state_dict(variables, rename=mmseg_rename, as_torch=True)
    state_dict["fc.weight"], state_dict["fc.bias"] = torch.zeros(10, 4), torch.zeros(10)
    torch.save(state_dict, path)
    return variables, state_dict


def _spec(name, layout, depth=18):
    return initialisation.PretrainedBackbone(
        name, f"{name}.pth", "https://example.org/" + name, layout, depth, "tests"
    )


def _fresh(bundle, shape):
    return _shapes(bundle.module, shape)


def _model_config(name, directory):
    return tiny_config(**{"model.pretrained": name, "model.pretrained_dir": str(directory)}).model


@pytest.fixture(name="tiny_v1c", scope="module")
def fixture_tiny_v1c(tmp_path_factory):
    """The dnl_tiny backbone (ResNet-18, widths 8) in open-mmlab layout, converted."""
    tmp_path = tmp_path_factory.mktemp("tiny_v1c")
    source = tmp_path / "tiny_v1c.pth"
    original, state_dict = _save_backbone(
        ResNetV1c(depth=18, base_channels=8, stem_channels=8), source
    )
    spec = _spec("tiny_v1c", "open-mmlab")
    summary = convert_cli.convert_backbone(spec, str(source), str(tmp_path / "pretrained"))
    return original, summary, tmp_path / "pretrained", source, state_dict


def test_open_mmlab_backbone_converts_and_loads_into_a_segmentor(tiny_v1c):
    original, summary, directory, _, _ = tiny_v1c
    written = json.loads((directory / "tiny_v1c" / "pretrained.json").read_text())
    assert written == summary and summary["layout"] == "open-mmlab"
    assert summary["loaded"] == len(jax.tree.leaves(original))  # fc.* dropped, all else loaded
    bundle = get_model("dnl_tiny", 5)
    fresh = _fresh(bundle, (1, 32, 32, 3))
    params, stats = initialisation.load_into(
        _model_config("tiny_v1c", directory), fresh["params"], fresh["batch_stats"], load_variables
    )
    jax.tree.map(np.testing.assert_array_equal, params["backbone"], original["params"])
    jax.tree.map(np.testing.assert_array_equal, stats["backbone"], original["batch_stats"])
    jax.tree.map(
        np.testing.assert_array_equal, params["decode_head"], fresh["params"]["decode_head"]
    )  # the heads keep their initialisation


def test_deepbase_layout_converts_to_the_same_variables(tiny_v1c):
    original, _, _, _, state_dict = tiny_v1c
    to_deepbase = {v: k for k, v in convert_cli.DEEPBASE_STEM.items()}  # stem.0 → conv1, ...
    renamed = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        renamed[f"prefix.{to_deepbase[module]}.{leaf}" if module in to_deepbase else key] = (
            value.numpy()
        )
    assert "prefix.conv1.weight" in renamed and "stem.0.weight" not in renamed
    variables, _ = convert_cli.backbone_variables(_spec("deep", "deepbase"), renamed)
    jax.tree.map(np.testing.assert_array_equal, variables, original)


def test_torchvision_backbone_is_inflated_into_the_video_model(tmp_path, monkeypatch):
    source = tmp_path / "tv.pth"
    original, _ = _save_backbone(ResNetV1b(depth=18, base_channels=4, stem_channels=8), source)
    spec = _spec("tiny_tv", "torchvision")
    monkeypatch.setitem(initialisation.BACKBONES, spec.name, spec)
    convert_cli.convert_backbone(spec, str(source), str(tmp_path / "pretrained"))
    bundle = get_model("dnl_i3d_tiny", 3)
    fresh = _fresh(bundle, (1, 4, 32, 32, 3))
    params, _ = initialisation.load_into(
        _model_config("tiny_tv", tmp_path / "pretrained"),
        fresh["params"],
        fresh["batch_stats"],
        load_variables,
    )
    stem_2d = original["params"]["conv1"]["kernel"]  # [7, 7, 3, 8]
    stem_3d = params["backbone"]["conv1"]["kernel"]  # [5, 7, 7, 3, 8]
    assert stem_3d.shape == (5, *stem_2d.shape)
    np.testing.assert_allclose(stem_3d.sum(axis=0), stem_2d, rtol=1e-6)  # same response
    np.testing.assert_allclose(stem_3d[2], stem_2d / 5, rtol=1e-6)
    blocks = [k for k in params["backbone"] if "dnl_block" in params["backbone"][k]]
    assert blocks  # context blocks keep their fresh initialisation
    for name in blocks:
        jax.tree.map(
            np.testing.assert_array_equal,
            params["backbone"][name]["dnl_block"],
            fresh["params"]["backbone"][name]["dnl_block"],
        )


def test_wrong_files_are_refused(tmp_path, tiny_v1c):
    _, _, directory, source, _ = tiny_v1c
    with pytest.raises(ValueError, match="ResNet-50, but the file's .* ResNet-18"):
        convert_cli.convert_backbone(_spec("r50", "open-mmlab", 50), str(source), str(tmp_path))
    with pytest.raises(ValueError, match="already exists"):
        convert_cli.convert_backbone(_spec("tiny_v1c", "open-mmlab"), str(source), str(directory))
    bundle = get_model("dnl_tiny", 5, base_channels=16)  # another width than the file
    fresh = _fresh(bundle, (1, 32, 32, 3))
    with pytest.raises(ValueError, match="shape"):
        initialisation.load_into(
            _model_config("tiny_v1c", directory),
            fresh["params"],
            fresh["batch_stats"],
            load_variables,
        )
    assert convert_cli.main(["resnet9_v1c", str(source)]) == 2


def test_initialisation_must_be_stated_and_present(tmp_path):
    real = {"data.name": "cityscapes"}
    with pytest.raises(ValueError, match="from scratch.*from_scratch=True"):
        initialisation.check_initialisation(tiny_config(**real))
    initialisation.check_initialisation(tiny_config(**real, **{"model.from_scratch": True}))
    initialisation.check_initialisation(tiny_config())  # synthetic scenes: tiny demo models
    initialisation.check_initialisation(tiny_config(**real, init_from="runs/x/checkpoints/1"))
    missing = tiny_config(
        **real, **{"model.pretrained": "resnet101_v1c", "model.pretrained_dir": str(tmp_path)}
    )
    with pytest.raises(ValueError) as error:
        initialisation.check_initialisation(missing)
    message = str(error.value)
    for part in (
        "resnet101_v1c-e67eebb6.pth",
        "https://download.openmmlab.com/pretrain/",
        f"python -m dnl_jax.cli.pretrained resnet101_v1c resnet101_v1c-e67eebb6.pth "
        f"--pretrained_dir {tmp_path}",
    ):
        assert part in message
    with pytest.raises(ValueError, match="not a known backbone"):
        initialisation.check_initialisation(tiny_config(**{"model.pretrained": "resnet9"}))
    with pytest.raises(ValueError, match="contradict"):
        initialisation.check_initialisation(
            tiny_config(**{"model.pretrained": "resnet50_v1c", "model.from_scratch": True})
        )


def test_training_starts_from_the_pretrained_backbone(tmp_path, tiny_v1c, monkeypatch):
    enable_compilation_cache()
    _, _, directory, _, _ = tiny_v1c
    monkeypatch.setitem(initialisation.BACKBONES, "tiny_v1c", _spec("tiny_v1c", "open-mmlab"))
    config = tiny_config(
        total_steps=1, **{"model.pretrained": "tiny_v1c", "model.pretrained_dir": str(directory)}
    )
    result = train_and_evaluate(config, str(tmp_path / "run"))
    scales = [
        np.asarray(v)
        for p, v in traverse_util.flatten_dict(
            mapping.plain_dict(result["state"].params["backbone"])
        ).items()
        if p[-1] == "scale"
    ]
    # One SGD step (lr 0.01) moves the loaded 3.0 a little; a fresh start would be near 1.0.
    assert all(np.all(np.abs(s - MARKED_SCALE) < 0.1) for s in scales)
    with pytest.raises(ValueError, match="not found at"):
        train_and_evaluate(
            tiny_config(
                **{"model.pretrained": "resnet50_v1c", "model.pretrained_dir": str(tmp_path)}
            ),
            str(tmp_path / "refused"),
        )
    assert not os.path.exists(tmp_path / "refused")
