"""mmaction2 `Recognizer3D` state_dicts (`ResNet3d` backbone + `I3DHead`) ↔ dnl_jax
`VideoClassifier` variables: C2D and I3D, with or without mmcv `NonLocal3d` blocks (embedded
Gaussian or dot product).

Key names (Flax module path → mmaction2 key prefix; leaves as in `mapping`):

    backbone/conv1, backbone/bn1          ↔ backbone.conv1.conv, backbone.conv1.bn   (ConvModule)
    backbone/layer{s}_{i}/conv{n}, bn{n}  ↔ backbone.layer{s}.{i}.conv{n}.conv, .conv{n}.bn
    .../downsample_0, downsample_1        ↔ ....downsample.conv, ....downsample.bn
    .../nl_block (or dnl_block)/g, phi    ↔ ....non_local_block.g.0, .phi.0   (sub_sample: conv
                                             then max-pool in a Sequential), theta, conv_out as is
    fc                                    ↔ cls_head.fc_cls

The architecture (depth, widths, which blocks are inflated 3×1×1, the stem's time kernel, where
the non-local blocks sit, their reduction, the number of classes) is read from the keys. What
the weights do not store is an argument: the time strides (`layout`, default 'mmaction', see
`dnl_jax.models.video.VIDEO_LAYOUTS`), the non-local `nl_mode` ('embedded_gaussian' or
'dot_product': same keys) and `use_scale` (mmaction2's configs: False).

Not supported (a clear error): mmaction2's 2-D `C2D` class (4-D `conv1` weights; its stem pool is
unpadded), 'caffe' style, and inflated `BasicBlock3d`s (R18/34 I3D inflate both 3×3 convs to
3×3×3, which dnl_jax's `BasicBlock` does not).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.interop import mapping, segmentor
from dnl_jax.interop.checkpoint_io import to_numpy
from dnl_jax.interop.mmseg import _sub_sample_rename

STEM_KEY = "backbone.conv1.conv.weight"
CLASSIFIER_KEY = "cls_head.fc_cls.weight"
_CONTEXT_BLOCKS = ("nl_block", "dnl_block")
_CONV_MODULE = re.compile(r"^(conv|bn)(\d)$")


def mmaction_rename(module_path: tuple[str, ...]) -> str:
    """Flax module path of a `VideoClassifier` → mmaction2 Recognizer3D key prefix."""
    if module_path == ("fc",):
        return "cls_head.fc_cls"
    if module_path[0] != "backbone":
        raise ValueError(f"no mmaction2 counterpart for Flax module {'/'.join(module_path)!r}.")
    rest = module_path[1:]
    if rest in (("conv1",), ("bn1",)):
        return "backbone.conv1." + ("conv" if rest[0] == "conv1" else "bn")
    layer = re.sub(r"^layer(\d)_(\d+)$", r"layer\1.\2", rest[0])
    inner = rest[1:]
    if inner[0] in _CONTEXT_BLOCKS:
        return f"backbone.{layer}.non_local_block." + _sub_sample_rename(inner[1:])
    if inner[0] in ("downsample_0", "downsample_1"):
        return f"backbone.{layer}.downsample." + ("conv" if inner[0] == "downsample_0" else "bn")
    kind, index = _CONV_MODULE.match(inner[0]).groups()
    return f"backbone.{layer}.conv{index}." + ("conv" if kind == "conv" else "bn")


def is_mmaction_recognizer(state_dict: Mapping[str, Any]) -> bool:
    """A 3-D `ResNet3d` Recognizer (5-D stem conv under `backbone.conv1.conv`)."""
    return STEM_KEY in state_dict and to_numpy(state_dict[STEM_KEY]).ndim == 5


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(
            f"expected key {key!r} in an mmaction2 Recognizer3D state_dict; it is "
            f"absent (first keys: {sorted(state_dict)[:6]})."
        )
    return tuple(to_numpy(state_dict[key]).shape)


def _per_block(state_dict: Mapping[str, Any], depth: int, test) -> tuple[tuple[int, ...], ...]:
    """Per-stage indices of the blocks for which `test(prefix 'backbone.layer{s}.{i}.')` holds."""
    from dnl_jax.models import residual  # pylint: disable=import-outside-toplevel

    return tuple(
        tuple(i for i in range(n) if test(f"backbone.layer{s + 1}.{i}."))
        for s, n in enumerate(residual.ARCH_SETTINGS[depth])
    )


def recognizer_config(state_dict: Mapping[str, Any]) -> dict:
    """Architecture read from the keys: `ResNet3D` keyword arguments, plus `num_classes` and the
    non-local blocks' `reduction`/`sub_sample` (None when there are none)."""
    if not is_mmaction_recognizer(state_dict):
        raise ValueError(
            f"not an mmaction2 ResNet3d recognizer: {STEM_KEY!r} is absent or not 5-D (first keys:"
            f" {sorted(state_dict)[:6]}). mmaction2's 2-D `C2D` backbone is not supported; its "
            "ResNet3d with inflate=0 and conv1_kernel=(1, 7, 7) is."
        )
    # The block count per stage says the depth; the key names only differ in `.conv3.conv.`.
    depth = segmentor.resnet_depth(
        {key.replace(".conv3.conv.", ".conv3."): None for key in state_dict}, "backbone."
    )

    def kernel_t(prefix, conv):
        return _shape(state_dict, f"{prefix}{conv}.conv.weight")[2]

    if any(_per_block(state_dict, depth, lambda p: kernel_t(p, "conv2") > 1)):
        raise ValueError(
            "this checkpoint inflates the 3×3 convs in time (inflate_style '3x3x3' "
            "or an inflated BasicBlock3d); dnl_jax's I3D inflates the first 1×1 conv "
            "(3×1×1) only."
        )
    inflated = _per_block(state_dict, depth, lambda p: kernel_t(p, "conv1") > 1)
    context = _per_block(
        state_dict, depth, lambda p: f"{p}non_local_block.theta.conv.weight" in state_dict
    )
    stem_out, in_channels, stem_t = _shape(state_dict, STEM_KEY)[:3]
    inflation = "i3d" if stem_t > 1 or any(inflated) else "c2d"
    config = dict(
        depth=depth,
        inflation=inflation,
        in_channels=in_channels,
        stem_channels=stem_out,
        base_channels=_shape(state_dict, "backbone.layer1.0.conv1.conv.weight")[0],
        conv1_temporal_kernel=stem_t,
        inflated_block_indices=inflated,
        context_block_indices=context,
        num_classes=_shape(state_dict, CLASSIFIER_KEY)[0],
        reduction=None,
        sub_sample=None,
    )
    if any(context):
        stage = next(s for s, chosen in enumerate(context) if chosen)
        prefix = f"backbone.layer{stage + 1}.{context[stage][0]}.non_local_block."
        config["sub_sample"] = f"{prefix}g.0.conv.weight" in state_dict
        inner, channels = _shape(
            state_dict, prefix + ("g.0" if config["sub_sample"] else "g") + ".conv.weight"
        )[:2]
        config["reduction"] = channels // inner
    return config


def recognizer_for_state_dict(
    state_dict: Mapping[str, Any],
    *,
    layout: str = "mmaction",
    nl_mode: str = "embedded_gaussian",
    use_scale: bool | None = None,
    **backbone_overrides,
):
    """The dnl_jax `VideoClassifier` for an mmaction2 Recognizer3D state_dict (see the module
    docstring for what is read from the keys and what the arguments decide)."""
    from dnl_jax.models import residual, video  # pylint: disable=import-outside-toplevel

    config = recognizer_config(state_dict)
    if layout not in video.VIDEO_LAYOUTS:
        raise ValueError(
            f"unknown video layout {layout!r}; choose one of {sorted(video.VIDEO_LAYOUTS)}."
        )
    strides = dict(video.VIDEO_LAYOUTS[layout])
    scale = strides.pop("use_scale")
    scale = scale if use_scale is None else use_scale
    num_classes, reduction, sub_sample = (
        config.pop(k) for k in ("num_classes", "reduction", "sub_sample")
    )
    spec = None
    if reduction is not None:
        spec = residual.ContextSpec(
            kind="nl",
            placement="after_block",
            reduction=reduction,
            sub_sample=sub_sample,
            pool_window=(1, 2, 2) if sub_sample else None,
            use_scale=scale,
            mode=nl_mode,
        )
    backbone = video.ResNet3D(context=spec, **{**config, **strides, **backbone_overrides})
    return video.VideoClassifier(backbone=backbone, num_classes=num_classes)


def video_template(module: Any, clip_shape: tuple[int, int, int] = (8, 64, 64)) -> dict:
    """Variable shapes of a `VideoClassifier` for a `[1, *clip_shape, C]` clip."""
    clips = jnp.zeros((1, *clip_shape, module.backbone.in_channels), jnp.float32)
    return mapping.plain_dict(
        jax.eval_shape(lambda: module.init(jax.random.key(0), clips, train=False))
    )


def mmaction_to_flax(
    state_dict: Mapping[str, Any], module: Any | None = None, *, strict: bool = True, **build_kwargs
) -> tuple[Any, dict, mapping.ConversionReport]:
    """mmaction2 Recognizer3D state_dict → (VideoClassifier, variables, report).

    `module` (e.g. a registry model) is filled as is; otherwise it is built from the keys with
    `recognizer_for_state_dict(state_dict, **build_kwargs)` (`layout`, `nl_mode`, `use_scale`).
    A `dnl_block` model takes an NL checkpoint's `non_local_block` weights by name, so its
    `conv_mask` is reported missing (load it with `strict=False`).
    """
    if module is None:
        module = recognizer_for_state_dict(state_dict, **build_kwargs)
    elif build_kwargs:
        raise ValueError(
            f"{sorted(build_kwargs)} only apply when the module is built here; "
            "build the module with them instead."
        )
    variables, report = mapping.torch_to_flax(
        state_dict,
        video_template(module),
        rename=mmaction_rename,
        strict=strict,
        what="mmaction2 Recognizer3D state_dict",
    )
    return module, variables, report


def video_module(
    state_dict: Mapping[str, Any],
    model: str = "auto",
    num_classes: int | None = None,
    **build_kwargs,
) -> Any:
    """The `VideoClassifier` a Recognizer3D state_dict converts into: built from its keys
    (`model='auto'`), or the registry model `model` with the 'mmaction' layout."""
    if model == "auto":
        return recognizer_for_state_dict(state_dict, **build_kwargs)
    from dnl_jax import tasks  # pylint: disable=import-outside-toplevel

    classes = num_classes or recognizer_config(state_dict)["num_classes"]
    task = tasks.for_model(model)
    if task is not tasks.TASKS["video"]:
        raise ValueError(
            f"--model {model!r} is a {task.name} model; an mmaction2 recogniser "
            "converts into a video model (e.g. nl_i3d_r50) or --model auto."
        )
    return tasks.get_model(model, classes, **{"layout": "mmaction", **build_kwargs}).module


def fresh_video_variables(module: Any, seed: int = 0) -> dict:
    """A `VideoClassifier`'s own initialisation (numpy leaves), e.g. to merge a partial load."""
    from dnl_jax.models import registry  # pylint: disable=import-outside-toplevel

    clips = jnp.zeros((1, 8, 64, 64, module.backbone.in_channels), jnp.float32)
    variables = registry.init_variables(module, jax.random.key(seed), clips)
    return jax.tree.map(np.asarray, mapping.plain_dict(variables))


def layout_summary(module: Any) -> dict | None:
    """What a video model needs that its weights do not store (None for other modules)."""
    backbone = getattr(module, "backbone", None)
    if not hasattr(backbone, "conv1_temporal_stride"):
        return None
    spec = backbone.context
    return dict(
        conv1_temporal_stride=backbone.conv1_temporal_stride,
        pool1_temporal_stride=backbone.pool1_temporal_stride,
        temporal_pool_window=backbone.temporal_pool_window,
        nl_mode=spec.mode if spec else None,
        use_scale=spec.use_scale if spec else None,
    )


def flax_video_to_mmaction_state_dict(variables: Any, *, as_torch: bool = False) -> dict:
    """`VideoClassifier` variables → mmaction2 Recognizer3D state_dict (inverse of the above)."""
    return mapping.flax_to_torch_state_dict(variables, rename=mmaction_rename, as_torch=as_torch)


__all__ = [
    "flax_video_to_mmaction_state_dict",
    "fresh_video_variables",
    "is_mmaction_recognizer",
    "layout_summary",
    "mmaction_rename",
    "mmaction_to_flax",
    "recognizer_config",
    "recognizer_for_state_dict",
    "video_module",
    "video_template",
]
