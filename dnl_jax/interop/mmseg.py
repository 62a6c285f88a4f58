"""mmcv / mmseg state_dicts → dnl_jax variables, recognised by their keys.

Bare blocks (a block's own `state_dict()`, or a sub-dict taken with `strip_prefix`):
- mmseg `DisentangledNonLocal2d`: has `conv_mask.weight` → `blocks.DisentangledNonLocal`.
- mmcv `NonLocal2d` with a norm (mmseg's NLHead builds it with BN): `conv_out.bn.*` →
  `blocks.NonLocal()`; without a norm: `conv_out.conv.bias` → `blocks.NonLocal(norm=None)`.
- mmcv `ContextBlock` (GCNet): `channel_add_conv.*` / `channel_mul_conv.*` →
  `blocks.ContextBlock` with the checkpoint's ratio, pooling and fusion types.
The reduction is read from `g.conv.weight` ([C/reduction, C, 1, 1]); mmcv's `sub_sample` wraps
g and phi in a Sequential with a max-pool (`g.0.conv.weight`), which maps to `sub_sample=True`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from dnl_jax.core import blocks
from dnl_jax.interop import mapping
from dnl_jax.interop.checkpoint_io import to_numpy


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under `prefix` (e.g. 'decode_head.dnl_block.'), with the prefix removed."""
    prefix = prefix if prefix.endswith(".") or not prefix else prefix + "."
    sub = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not sub:
        raise ValueError(
            f"no key starts with {prefix!r}; first keys: {sorted(state_dict)[:6]}. Check the "
            "prefix."
        )
    return sub


def _block_layout(state_dict: Mapping[str, Any]) -> tuple[int, int, bool]:
    """(in channels, reduction, sub_sample) from the g projection's weight."""
    sub_sample = "g.0.conv.weight" in state_dict
    g_key = "g.0.conv.weight" if sub_sample else "g.conv.weight"
    if g_key not in state_dict:
        raise ValueError(
            f"not a non-local block state_dict: no {g_key!r} (keys: {sorted(state_dict)[:6]}...). "
            "For a whole segmentor pass its full state_dict; for a block inside one, take its "
            "entries with strip_prefix(state_dict, 'decode_head.dnl_block.')."
        )
    inner, channels = to_numpy(state_dict[g_key]).shape[:2]
    if channels % inner:
        raise ValueError(
            f"{g_key} has shape {tuple(to_numpy(state_dict[g_key]).shape)}: "
            f"{channels} input channels are not a multiple of {inner} inner ones."
        )
    return channels, channels // inner, sub_sample


def _sub_sample_rename(module_path: tuple[str, ...]) -> str:
    """mmcv's sub-sampled g/phi are `Sequential(conv, pool)`: `g.conv` lives at `g.0.conv`."""
    head, *rest = module_path
    if head in ("g", "phi"):
        return mapping.default_rename((head, "0", *rest))
    return mapping.default_rename(module_path)


def _context_block(state_dict: Mapping[str, Any]) -> tuple[Any, int] | None:
    """(`ContextBlock`, channels) for an mmcv ContextBlock state_dict, else None."""
    fusion_types = tuple(
        kind for kind in ("channel_add", "channel_mul") if f"{kind}_conv.0.weight" in state_dict
    )
    if not fusion_types:
        return None
    planes, channels = to_numpy(state_dict[f"{fusion_types[0]}_conv.0.weight"]).shape[:2]
    ratio = planes / channels
    if int(channels * ratio) != planes:  # Float rounding below an integer: step up one ulp.
        ratio = math.nextafter(ratio, 1.0)
    pooling = "att" if "conv_mask.weight" in state_dict else "avg"
    return blocks.ContextBlock(ratio=ratio, pooling=pooling, fusion_types=fusion_types), channels


def block_for_state_dict(state_dict: Mapping[str, Any]) -> tuple[Any, int]:
    """The dnl_jax block (with the checkpoint's reduction/sub-sampling) and its channel count."""
    context = _context_block(state_dict)
    if context is not None:
        return context
    channels, reduction, sub_sample = _block_layout(state_dict)
    cls = blocks.DisentangledNonLocal if "conv_mask.weight" in state_dict else blocks.NonLocal
    # Built without norm_cfg, mmcv's conv_out has a bias and no norm.
    norm = "batch" if "conv_out.bn.weight" in state_dict else None
    return cls(reduction=reduction, sub_sample=sub_sample, norm=norm), channels


def block_to_flax(
    state_dict: Mapping[str, Any], *, strict: bool = True
) -> tuple[Any, dict, mapping.ConversionReport]:
    """Bare mmcv `NonLocal2d` / `ContextBlock` / mmseg `DisentangledNonLocal2d` → (module,
    variables, report)."""
    module, channels = block_for_state_dict(state_dict)
    template = mapping.template_of(module, jnp.zeros((1, 2, 2, channels), jnp.float32))
    rename = _sub_sample_rename if getattr(module, "sub_sample", False) else None
    variables, report = mapping.torch_to_flax(
        state_dict,
        template,
        rename=rename,
        strict=strict,
        what=f"{type(module).__name__} state_dict",
    )
    return module, variables, report


def flax_block_to_torch_state_dict(module: Any, variables: Any, *, as_torch: bool = False) -> dict:
    """A dnl_jax block's variables → the mmcv/mmseg block's state_dict (inverse of the above)."""
    sub_sample = getattr(module, "sub_sample", False)
    rename: mapping.Rename | None = _sub_sample_rename if sub_sample else None
    return mapping.flax_to_torch_state_dict(variables, rename=rename, as_torch=as_torch)
