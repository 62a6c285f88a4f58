"""mmdetection Mask R-CNN state_dicts: which key layout ('mmdet' for v2/v3, 'mmdet_v1'), the
renaming of our module paths to its keys, and the architecture read from the keys
(`detector_config`). mmdet.py converts the weights; its docstring describes both layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dnl_jax.interop import mapping, segmentor
from dnl_jax.interop.checkpoint_io import to_numpy
from dnl_jax.models import residual

LAYOUTS = ("mmdet", "mmdet_v1")
FPN_KEY = "neck.lateral_convs.0.conv.weight"
# Module names per layout: (prefix of the RoI heads, {our context block: theirs}).
ROI_PREFIX = {"mmdet": "roi_head.", "mmdet_v1": ""}
_CONTEXT_NAMES = {
    "mmdet": {"gc_block": "context_block"},
    "mmdet_v1": {"gc_block": "context_block", "dnl_official_block": "nl_gc_block"},
}
# Their context block key (under a residual block) → (our kind, our placement).
_CONTEXT_KINDS = {
    "mmdet": {"context_block.conv_mask.weight": ("gc", "before_add")},
    "mmdet_v1": {
        "context_block.conv_mask.weight": ("gc", "after_add"),
        "nl_gc_block.conv_query.weight": ("dnl_official", "after_add"),
    },
}
_UNSUPPORTED = {
    "nonlocal_block.g.conv.weight": "the NL plug-in (nonlocal_block); use a GC or official DNL "
    "checkpoint",
}


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """'mmdet' (v2/v3, `roi_head.` prefix) or 'mmdet_v1' (`bbox_head.` at the top level)."""
    if any(key.startswith("roi_head.bbox_head.") for key in state_dict):
        return "mmdet"
    if any(key.startswith("bbox_head.") for key in state_dict):
        return "mmdet_v1"
    raise ValueError(
        "not an mmdet Mask R-CNN state_dict: no 'roi_head.bbox_head.*' (mmdet v2/v3) "
        f"or 'bbox_head.*' (mmdet v1) keys; first keys: {sorted(state_dict)[:6]}."
    )


def is_mmdet_detector(state_dict: Mapping[str, Any]) -> bool:
    """An mmdet two-stage detector with an FPN neck and a box head (either layout)."""
    return FPN_KEY in state_dict and any(
        key.startswith(("roi_head.bbox_head.", "bbox_head.")) for key in state_dict
    )


def check_layout(layout: str) -> None:
    """ValueError naming the choices unless `layout` is one of `LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown mmdet layout {layout!r}; choose one of {LAYOUTS}.")


def mmdet_rename(layout: str = "mmdet"):
    """Flax module path of a `MaskRCNN` → mmdet key prefix, for `layout`."""
    check_layout(layout)
    roi, context = ROI_PREFIX[layout], _CONTEXT_NAMES[layout]

    def rename(module_path: tuple[str, ...]) -> str:
        head, *rest = module_path
        if head == "backbone":
            rest = [context.get(name, name) for name in rest]
            return mapping.default_rename(("backbone", *rest))
        if head == "neck":  # mmcv ConvModule: a norm-free conv of ours sits at `.conv`.
            return mapping.default_rename(
                ("neck", *rest, "conv") if len(rest) == 1 else module_path
            )
        if head in ("bbox_head", "mask_head"):
            return roi + mapping.default_rename(module_path)
        if head == "rpn_head":
            return mapping.default_rename(module_path)
        raise ValueError(f"no mmdet counterpart for Flax module {'/'.join(module_path)!r}.")

    return rename


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(
            f"expected key {key!r} in an mmdet Mask R-CNN state_dict; it is absent "
            f"(first keys: {sorted(state_dict)[:6]})."
        )
    return tuple(to_numpy(state_dict[key]).shape)


def _count(state_dict: Mapping[str, Any], pattern: str) -> int:
    """How many distinct indices `(\\d+)` in `pattern` the keys have."""
    regex = re.compile(pattern)
    return len({m.group(1) for key in state_dict if (m := regex.match(key))})


def _context(state_dict: Mapping[str, Any], layout: str, depth: int) -> dict:
    """`context` (ContextSpec kwargs or None) and `context_block_indices` from the keys."""
    found = {}
    indices = []
    for stage, blocks in enumerate(residual.ARCH_SETTINGS[depth]):
        chosen = []
        for index in range(blocks):
            prefix = f"backbone.layer{stage + 1}.{index}."
            for suffix, kind in _CONTEXT_KINDS[layout].items():
                if prefix + suffix in state_dict:
                    found[kind] = prefix + suffix
                    chosen.append(index)
        indices.append(tuple(chosen))
    if not found:
        return dict(context=None, context_block_indices=None)
    if len(found) > 1:
        raise ValueError(
            f"the backbone mixes context blocks {sorted(found.values())}; dnl_jax "
            "places one kind per backbone."
        )
    (kind, placement), key = next(iter(found.items()))
    spec = dict(kind=kind, placement=placement)
    if kind == "gc":
        planes, channels = _shape(state_dict, key.replace("conv_mask", "channel_add_conv.0"))[:2]
        spec["ratio"] = planes / channels
    else:
        inner, channels = _shape(state_dict, key)[:2]
        spec["reduction"] = channels // inner
    return dict(context=spec, context_block_indices=tuple(indices))


def _conv_module_norm(state_dict: Mapping[str, Any], prefix: str, what: str) -> str | None:
    """'batch' or None: the norm of the mmcv ConvModule at `prefix` (e.g. 'neck.fpn_convs.0.')."""
    names = {key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)}
    others = sorted(names - {"conv", "bn"})
    if others:
        raise ValueError(
            f"{what} ({prefix}*) has {others} besides 'conv' / 'bn'; dnl_jax maps a "
            "ConvModule's conv and batch norm ('bn') only (no GN there)."
        )
    return "batch" if "bn" in names else None


def _neck_and_mask_norms(state_dict: Mapping[str, Any], roi: str) -> dict:
    """`neck_norm` and `mask_norm` from the keys: one norm for all FPN convs, one for the mask
    head's convs."""
    norms = {}
    for attribute, what, lists in (
        ("neck_norm", "the FPN", ("neck.lateral_convs.", "neck.fpn_convs.")),
        ("mask_norm", "the mask head", (f"{roi}mask_head.convs.",)),
    ):
        found = {}
        for base in lists:
            for index in range(_count(state_dict, rf"^{re.escape(base)}(\d+)\.")):
                prefix = f"{base}{index}."
                found[prefix] = _conv_module_norm(state_dict, prefix, what)
        kinds = set(found.values())
        if len(kinds) > 1:
            with_norm = sorted(prefix for prefix, norm in found.items() if norm)
            raise ValueError(
                f"{what} has a norm in only some of its convs ({with_norm}; e.g. "
                "mmdet's no_norm_on_lateral=True); dnl_jax's has one norm for all."
            )
        norms[attribute] = kinds.pop() if kinds else None
    return norms


def detector_config(state_dict: Mapping[str, Any], layout: str | None = None) -> dict:
    """`MaskRCNN` keyword arguments read from the keys (`context` as ContextSpec kwargs)."""
    layout = layout or detect_layout(state_dict)
    check_layout(layout)
    for suffix, what in _UNSUPPORTED.items():
        if any(key.endswith(suffix) for key in state_dict):
            raise ValueError(f"this checkpoint has {what}; it cannot be converted.")
    roi = ROI_PREFIX[layout]
    depth = segmentor.resnet_depth(state_dict, "backbone.")
    box = f"{roi}bbox_head."
    num_convs = _count(state_dict, rf"^{re.escape(box)}shared_convs\.(\d+)\.")
    num_fcs = _count(state_dict, rf"^{re.escape(box)}shared_fcs\.(\d+)\.")
    if (num_convs, num_fcs) not in ((0, 2), (4, 1)):
        raise ValueError(
            f"box head with {num_convs} shared convs and {num_fcs} shared fcs; "
            "dnl_jax has '2fc' (0, 2) and '4conv1fc' (4, 1)."
        )
    classes = _shape(state_dict, f"{box}fc_cls.weight")[0] - (1 if layout == "mmdet" else 0)
    reg = _shape(state_dict, f"{box}fc_reg.weight")[0]
    expected_reg = 4 * classes  # K classes (v2+) or K + 1 with the background (v1)
    if reg != expected_reg:
        raise ValueError(
            f"fc_reg has {reg} outputs; a class-specific head for fc_cls's classes "
            f"has {expected_reg} (class-agnostic regression is not supported)."
        )
    if layout == "mmdet_v1":
        classes -= 1  # v1 counts the background among its classes.
    config = dict(
        num_classes=classes,
        depth=depth,
        stem_channels=_shape(state_dict, "backbone.conv1.weight")[0],
        base_channels=_shape(state_dict, "backbone.layer1.0.conv1.weight")[0],
        fpn_channels=_shape(state_dict, FPN_KEY)[0],
        fc_channels=_shape(state_dict, f"{box}shared_fcs.0.weight")[0],
        conv_channels=_shape(state_dict, f"{roi}mask_head.convs.0.conv.weight")[0],
        box_head="2fc" if num_convs == 0 else "4conv1fc",
        head_norm="batch" if f"{box}shared_convs.0.bn.weight" in state_dict else None,
        **_neck_and_mask_norms(state_dict, roi),
        **_context(state_dict, layout, depth),
    )
    if (
        num_convs
        and _shape(state_dict, f"{box}shared_convs.0.conv.weight")[0] != config["conv_channels"]
    ):
        raise ValueError(
            "the box head's and the mask head's conv widths differ; dnl_jax's "
            "MaskRCNN has one `conv_channels` for both."
        )
    return config


__all__ = [
    "FPN_KEY",
    "LAYOUTS",
    "ROI_PREFIX",
    "check_layout",
    "detect_layout",
    "detector_config",
    "is_mmdet_detector",
    "mmdet_rename",
]
