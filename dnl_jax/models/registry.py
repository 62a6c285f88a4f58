"""The model registry: a table of names → (task, the settings that differ from the task's
defaults), plus two helpers on built models (`init_variables`, `parameter_mismatch`).

Every option of a model and its default is declared once, by its task
(`dnl_jax.tasks.<task>.MODEL_DEFAULTS`); `dnl_jax.tasks.get_model(name, num_classes,
**overrides)` looks the name up here, resolves the settings and builds the `ModelBundle`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

_R50_WIDTHS = dict(channels=512, aux_channels=256)  # mmseg heads on 2048/1024-channel stages
_R18_WIDTHS = dict(channels=128, aux_channels=64)  # mmseg heads on 512/256-channel stages
# The CPU demo's scale; the `*_tiny` family differs only in the decode head (ablations).
_TINY = dict(base_channels=8, stem_channels=8, channels=16, aux_channels=8)


def _seg(head: str, depth: int, **extra) -> tuple[str, dict]:
    widths = _R18_WIDTHS if depth < 50 else _R50_WIDTHS
    return "segmentation", {"head": head, **widths, "depth": depth, **extra}


def _vid(context: str | None, inflation: str, **extra) -> tuple[str, dict]:
    return "video", {"context": context, "inflation": inflation, **extra}


def _det(context: str | None, context_stages: str = "c4", **extra) -> tuple[str, dict]:
    """Mask R-CNN R50-FPN (mmdet 3.x `mask-rcnn_r50_fpn_1x_coco`) with a context block of the
    official DNL detection code (tasks/detection.py) at `context_stages`."""
    return "detection", {"context": context, "context_stages": context_stages, **extra}


_TINY_DETECTOR = dict(
    depth=18,
    stem_channels=16,
    base_channels=16,
    frozen_bn=False,
    fpn_channels=32,
    fc_channels=64,
    conv_channels=32,
    rpn_train=(200, 100),
    rpn_test=(200, 100),
    rpn_sampler=(64, 0.5),
    rcnn_sampler=(32, 0.25),
    max_detections=10,
    roi_grid_limit=2,
)

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "dnl_tiny": _seg("dnl", 18, **_TINY),
    "dnl_pairwise_tiny": _seg("dnl", 18, **_TINY, unary=False),
    "dnl_unary_tiny": _seg("dnl", 18, **_TINY, pairwise=False),
    "nl_tiny": _seg("nl", 18, **_TINY),
    "gc_tiny": _seg("gc", 18, **_TINY),
    "fcn_tiny": _seg("fcn", 18, **_TINY),
    "dnl_r18-d8": _seg("dnl", 18),
    "dnl_r50-d8": _seg("dnl", 50),
    "dnl_r101-d8": _seg("dnl", 101),
    "nl_r50-d8": _seg("nl", 50),
    "nl_r101-d8": _seg("nl", 101),
    "fcn_r50-d8": _seg("fcn", 50),
    "fcn_r101-d8": _seg("fcn", 101),
    "gc_r50-d8": _seg("gc", 50),
    "dnl_i3d_r50": _vid("dnl", "i3d"),
    "nl_i3d_r50": _vid("nl", "i3d"),
    "dnl_c2d_r50": _vid("dnl", "c2d"),
    "dnl_i3d_tiny": _vid("dnl", "i3d", depth=18, base_channels=4, stem_channels=8),
    "mask_rcnn_r50_fpn": _det(None),
    "mask_rcnn_r50_fpn_nl_c4": _det("nl"),
    "mask_rcnn_r50_fpn_gc_c4": _det("gc"),
    "mask_rcnn_r50_fpn_dnl_c4": _det("dnl_official"),
    "mask_rcnn_r50_fpn_dnl_c4c5": _det("dnl_official", "c4+c5_all"),
    # The synthetic detection scenes' scale (CPU): ResNet-18 of 16 base channels trained from
    # scratch (batch norm in training mode), 32/64-wide heads, few proposals and samples.
    **{
        f"mask_rcnn_{name}_tiny": _det(context, **_TINY_DETECTOR)
        for name, context in (("fcn", None), ("dnl", "dnl_official"), ("nl", "nl"), ("gc", "gc"))
    },
}
MODEL_NAMES: tuple[str, ...] = tuple(sorted(MODELS))


def lookup(name: str) -> tuple[str, dict[str, Any]]:
    """(task name, settings) of the registered model `name`; ValueError listing the names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}.")
    task, entry = MODELS[name]
    return task, dict(entry)


def parameter_mismatch(loaded, expected) -> str | None:
    """None when the trees `loaded` and `expected` (arrays or shape structs) have the same
    parameter names and shapes, else a short description of the first difference, e.g.
    "['decode_head']['conv_seg']['kernel']: (1, 1, 16, 5) here, (1, 1, 16, 7) for the model"."""

    def shapes(tree):
        return {
            jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ()))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }

    here, there = shapes(loaded), shapes(expected)
    missing, extra = sorted(set(there) - set(here)), sorted(set(here) - set(there))
    if missing:
        return f"{len(missing)} parameters missing, e.g. {missing[0]}"
    if extra:
        return f"{len(extra)} parameters the model does not have, e.g. {extra[0]}"
    for path in sorted(there):
        if here[path] != there[path]:
            return f"{path}: {here[path]} here, {there[path]} for the model"
    return None


def init_variables(module: nn.Module, rng: jax.Array, inputs: jax.Array) -> dict:
    """`module.init(rng, inputs, train=False)` under jit → `{'params', 'batch_stats'}`.

    On CPU the init program is compiled with XLA's backend optimisation off: the random
    initialisers unroll into large programs that take LLVM tens of seconds to optimise for a
    one-off run (20 s → 2 s for the tiny model); other backends compile it as usual.
    """
    lowered = jax.jit(lambda key, x: module.init(key, x, train=False)).lower(rng, inputs)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng, inputs)


__all__ = ["MODELS", "MODEL_NAMES", "lookup", "init_variables", "parameter_mismatch"]
