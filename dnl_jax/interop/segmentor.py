"""Whole mmseg `EncoderDecoder` state_dicts (DNLNet / NLNet / FCN on ResNetV1c) ↔ dnl_jax
`Segmentor` variables, and ImageNet-pretrained ResNetV1c backbones (open-mmlab `resnet50_v1c`).

Names follow the models' rule (dnl_jax/models/resnet.py): Flax module `X_N` ↔ PyTorch `X.N`,
modules nested with `.`, so `params/backbone/layer3_5/downsample_0/kernel` ↔
`backbone.layer3.5.downsample.0.weight`. The architecture (depth, widths, head kind, classes,
auxiliary head) is read from the keys; the output stride is not stored in weights and defaults
to mmseg's D8 (pass `output_stride=16` for D16 checkpoints).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dnl_jax.interop import mapping, mmseg
from dnl_jax.interop.checkpoint_io import to_numpy
from dnl_jax.models import residual
from dnl_jax.models.resnet import ResNetV1c
from dnl_jax.models.segmentor import build_segmentor

CLASSIFIER_PREFIXES = ("fc.",)  # ImageNet classifier of pretrained backbones: not in our trunk.


# Flax `('backbone', 'layer1_0', 'downsample_1')` ↔ `'backbone.layer1.0.downsample.1'`.
mmseg_rename = mapping.default_rename


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(
            f"expected key {key!r} in an mmseg ResNetV1c segmentor state_dict; it is absent "
            f"(first keys: {sorted(state_dict)[:6]}). A torchvision ResNet (7×7 `conv1`) needs "
            "torchvision_resnet_to_flax instead."
        )
    return tuple(to_numpy(state_dict[key]).shape)


def _stage_blocks(state_dict: Mapping[str, Any], prefix: str) -> tuple[int, ...]:
    counts = []
    for stage in range(1, 5):
        pattern = re.compile(rf"^{re.escape(prefix)}layer{stage}\.(\d+)\.")
        counts.append(len({m.group(1) for key in state_dict if (m := pattern.match(key))}))
    return tuple(counts)


def resnet_depth(state_dict: Mapping[str, Any], prefix: str = "") -> int:
    """ResNet depth from the number of blocks per stage and the block type (conv3 = bottleneck)."""
    blocks = _stage_blocks(state_dict, prefix)
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
    for depth, setting in residual.ARCH_SETTINGS.items():
        if tuple(setting) == blocks and (depth >= 50) == bottleneck:
            return depth
    raise ValueError(
        f"blocks per stage {blocks} ({'bottleneck' if bottleneck else 'basic'}) match no ResNet "
        f"depth in {sorted(residual.ARCH_SETTINGS)}; is {prefix or 'the state_dict'} a ResNet?"
    )


def _head_kind(state_dict: Mapping[str, Any]) -> str:
    for kind, key in (
        ("dnl", "decode_head.dnl_block.conv_mask.weight"),
        ("nl", "decode_head.nl_block.g.conv.weight"),
        ("gc", "decode_head.gc_block.conv_mask.weight"),
    ):
        if key in state_dict:
            return kind
    return "fcn"


def segmentor_config(state_dict: Mapping[str, Any]) -> dict:
    """`build_segmentor` keyword arguments that reproduce the checkpoint's architecture."""
    kind = _head_kind(state_dict)
    channels = _shape(state_dict, "decode_head.convs.0.conv.weight")[0]
    head_kwargs = {}
    if kind in ("dnl", "nl"):
        inner = _shape(state_dict, f"decode_head.{kind}_block.g.conv.weight")[0]
        head_kwargs["reduction"] = channels // inner
    elif kind == "gc":
        gc_block = mmseg.strip_prefix(state_dict, "decode_head.gc_block")
        head_kwargs["ratio"] = mmseg.block_for_state_dict(gc_block)[0].ratio
    elif kind == "fcn":
        head_kwargs["num_convs"] = len(_indices_under(state_dict, "decode_head.convs."))
        head_kwargs["concat_input"] = "decode_head.conv_cat.conv.weight" in state_dict
    aux = any(key.startswith("auxiliary_head.") for key in state_dict)
    config = dict(
        backbone_depth=resnet_depth(state_dict, "backbone."),
        head=kind,
        num_classes=_shape(state_dict, "decode_head.conv_seg.weight")[0],
        aux=aux,
        in_channels=_shape(state_dict, "backbone.stem.0.weight")[1],
        stem_channels=_shape(state_dict, "backbone.stem.6.weight")[0],
        base_channels=_shape(state_dict, "backbone.layer1.0.conv1.weight")[0],
        channels=channels,
        head_kwargs=head_kwargs,
    )
    if aux:
        config["aux_channels"] = _shape(state_dict, "auxiliary_head.convs.0.conv.weight")[0]
    return config


def _indices_under(state_dict: Mapping[str, Any], prefix: str) -> set[str]:
    """Distinct indices N of keys `prefix N.…` (e.g. the convs of a head)."""
    return {key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}


def segmentor_for_state_dict(state_dict: Mapping[str, Any], **overrides):
    """The dnl_jax `Segmentor` matching an mmseg EncoderDecoder state_dict.

    `overrides` go to `dnl_jax.models.segmentor.build_segmentor` (e.g. `output_stride=16`,
    `dtype=jnp.bfloat16`, `axis_name='batch'`).
    """
    return build_segmentor(**{**segmentor_config(state_dict), **overrides})


def segmentor_template(module: Any, image_size: int = 64) -> dict:
    """Variable shapes of a `Segmentor`, auxiliary head included (it only runs in training)."""
    key = jax.random.key(0)
    images = jnp.zeros((1, image_size, image_size, module.backbone.in_channels), jnp.float32)
    shapes = jax.eval_shape(
        lambda: module.init({"params": key, "dropout": key}, images, train=True)
    )
    return mapping.plain_dict(shapes)


def segmentor_to_flax(
    state_dict: Mapping[str, Any], module: Any | None = None, *, strict: bool = True
) -> tuple[Any, dict, mapping.ConversionReport]:
    """mmseg EncoderDecoder state_dict → (Segmentor, variables, report)."""
    module = module if module is not None else segmentor_for_state_dict(state_dict)
    variables, report = mapping.torch_to_flax(
        state_dict,
        segmentor_template(module),
        rename=mmseg_rename,
        strict=strict,
        what="mmseg segmentor state_dict",
    )
    return module, variables, report


def mmseg_to_flax(state_dict: Mapping[str, Any], *, strict: bool = True):
    """mmcv/mmseg state_dict → `{'params': ..., 'batch_stats': ...}` for the matching module.

    A whole mmseg EncoderDecoder (keys `backbone.*`, `decode_head.*`, `auxiliary_head.*`) gives
    the variables of `segmentor_for_state_dict(state_dict)`; a bare block's those of
    `mmseg.block_for_state_dict(state_dict)[0]`.

    Args:
      state_dict: `{name: torch tensor or numpy array}`, e.g. from `load_torch_checkpoint`.
      strict: fail with a `ConversionError` listing every missing, unexpected and mis-shaped key.

    Returns:
      The variables when `strict`; `(variables with only the matched leaves, report)` otherwise.
    """
    if any(key.startswith("backbone.") for key in state_dict):
        _, variables, report = segmentor_to_flax(state_dict, strict=strict)
    else:
        _, variables, report = mmseg.block_to_flax(state_dict, strict=strict)
    return variables if strict else (variables, report)


def resnet_v1c_to_flax(
    state_dict: Mapping[str, Any], module: Any | None = None, *, strict: bool = True
) -> tuple[Any, dict, mapping.ConversionReport]:
    """ImageNet-pretrained mmseg/open-mmlab `resnet{50,101}_v1c` (keys `stem.*`, `layer*`, `fc.*`)
    → (ResNetV1c, backbone variables, report). The classifier `fc.*` is dropped.

    To start a segmentor from it: `mapping.merge_variables(segmentor_variables,
    {'params': {'backbone': v['params']}, 'batch_stats': {'backbone': v['batch_stats']}})`.
    """
    trunk = {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    if module is None:
        module = ResNetV1c(
            depth=resnet_depth(trunk),
            in_channels=_shape(trunk, "stem.0.weight")[1],
            stem_channels=_shape(trunk, "stem.6.weight")[0],
            base_channels=_shape(trunk, "layer1.0.conv1.weight")[0],
        )
    images = jnp.zeros((1, 64, 64, module.in_channels), jnp.float32)
    variables, report = mapping.torch_to_flax(
        trunk,
        mapping.template_of(module, images),
        rename=mmseg_rename,
        strict=strict,
        what="ResNetV1c state_dict",
    )
    return module, variables, report


def flax_segmentor_to_torch_state_dict(variables: Any, *, as_torch: bool = False) -> dict:
    """Segmentor (or ResNetV1c) variables → mmseg state_dict (inverse of `segmentor_to_flax`)."""
    return mapping.flax_to_torch_state_dict(variables, rename=mmseg_rename, as_torch=as_torch)
