"""mmdetection Mask R-CNN R-FPN state_dicts → dnl_jax `MaskRCNN` variables `{'params',
'batch_stats'}`, in two key layouts.

Layout 'mmdet' (mmdet v2.x and v3.x, e.g. `mask-rcnn_r50_fpn_1x_coco`):

    backbone/conv1, bn1, layer{s}_{i}/...    ↔ backbone.conv1, .bn1, .layer{s}.{i}.* (torchvision
                                                names; downsample.0 / .1)
    backbone/.../gc_block                    ↔ backbone.layer{s}.{i}.context_block.*  (GCNet's
                                                mmcv `ContextBlock` plugin, position
                                                'after_conv3' = our placement 'before_add')
    neck/lateral_convs_{l}, fpn_convs_{l}    ↔ neck.lateral_convs.{l}.conv, .fpn_convs.{l}.conv
    neck/lateral_convs_{l}/conv, bn (norm)   ↔ neck.lateral_convs.{l}.conv, .bn (and fpn_convs)
    rpn_head/rpn_conv, rpn_cls, rpn_reg      ↔ rpn_head.rpn_conv, .rpn_cls, .rpn_reg
    bbox_head/shared_fcs_{i}, fc_cls, fc_reg ↔ roi_head.bbox_head.shared_fcs.{i}, .fc_cls, .fc_reg
    bbox_head/shared_convs_{i}/conv, bn      ↔ roi_head.bbox_head.shared_convs.{i}.conv, .bn
                                                ('4conv1fc' heads; bn with a norm_cfg)
    mask_head/convs_{i}/conv, bn, upsample,  ↔ roi_head.mask_head.convs.{i}.conv, .bn,
              conv_logits                       .upsample, .conv_logits (bn with a norm_cfg)

    mmcv's ConvModule names a batch norm `bn` in every version (BN, SyncBN and the official
    code's SyncABN alike), so the norm keys are the same in both layouts.

    fc_cls: K + 1 outputs, background LAST (as ours); fc_reg: 4K (class-specific); conv_logits:
    K channels. Copied as they are.

Layout 'mmdet_v1' (mmdetection v1.x, the official DNL detection code Howal/DNL-Object-Detection
and GCNet's): the same names without the `roi_head.` prefix (`bbox_head.*`, `mask_head.*`), and
`num_classes` counts the background, which is class 0:

    fc_cls [K + 1] (background first)  → ours [K + 1] (background last): rows rolled by −1;
    fc_reg [4(K + 1)] (rows 0–3 for the background, never trained) → ours [4K]: rows 4: kept;
    conv_logits [K + 1] channels (channel 0 background) → ours [K]: channel 0 dropped.

    Context blocks sit after the residual add, before the final ReLU (our 'after_add'):
    backbone.layer{s}.{i}.nl_gc_block.{conv_query,conv_key,conv_value,conv_mask,gamma} (the
    official DNL block, `NonLocal2dGc` with use_out=False: our 'dnl_official', C/4 inner
    channels by its ratio 1/4, 'channel' whitening, temperature 0.05 unless told) and
    backbone.layer{s}.{i}.context_block.* (GC, our 'gc').

In both layouts the first fully connected layer after the flattened RoI features takes
`[C, 7, 7]` inputs in PyTorch and `[7, 7, C]` here: its input rows are permuted on conversion.
The deconvolution `upsample` ([C_in, C_out, 2, 2] in PyTorch, [2, 2, C_in, C_out] in Flax) is
also flipped in space: Flax's `ConvTranspose` does not flip its kernel, PyTorch's does.

The architecture (depth, widths, box-head kind, the norms of the FPN, box head and mask head,
classes, context blocks and their reduction) is read from the keys (`detector_config`, in
mmdet_layout.py with the layout detection and the key renaming).

In-Place ABN (the official DNL detection configs' `norm_cfg=dict(type='SyncABN')`, i.e.
mapillary inplace_abn's `InPlaceABNSync`, everywhere: backbone, FPN, box and mask heads). Its
mmdet v1 `build_norm_layer` sets `activation='identity'`, so its activation is not the library's
default leaky ReLU: the ReLU after it is ConvModule's / the ResNet's own, as with BN, and the
FPN has none. It stores `weight`, `bias`, `running_mean` and `running_var` (inplace_abn 1.0.x
has no `num_batches_tracked`; 1.1+ has one) and computes, with eps 1e-5,

    y = (x − mean) / sqrt(var + eps) · (|weight| + eps) + bias

(|weight| + eps keeps the scale invertible): batch norm with scale |weight| + eps, which is what
the conversion writes as our `scale` for an ABN layer (exact; when fine-tuning, our plain scale
then trains where ABN's |weight| would). Which layers are ABN (`abn`): None infers it per layer
in the v1 layout (a batch norm without `num_batches_tracked`, which torch's BatchNorm always
saves, is inplace_abn 1.0.x's) and assumes none in the v2/v3 layout; True takes every batch
norm as ABN (an inplace_abn 1.1+ checkpoint cannot be told apart by its keys: pass True);
False none. What weights do not store: the context
block's temperature (`temperature`, 0.05 in the official configs) and, for v1, the behaviours
v1 differs in beyond weights: its RoIAlign (aligned=False, sample_num=2) and its box coder
(the +1 pixel convention); our detector runs mmdet v2+'s (aligned RoIAlign, no +1), so a v1
checkpoint converts exactly but predicts slightly differently from the v1 code.

Not supported (clear errors): a norm other than batch norm in the FPN or mask head (e.g. GN),
an FPN with a norm on only one of its lateral / output convs (`no_norm_on_lateral`), the NL
plug-in (`nonlocal_block`), class-agnostic regression, and 'caffe' style.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.interop import mapping
from dnl_jax.interop.checkpoint_io import to_numpy

# The key layouts and the architecture read from the keys live in mmdet_layout.py; these names
# stay importable from here.
from dnl_jax.interop.mmdet_layout import (
    FPN_KEY,
    LAYOUTS,
    ROI_PREFIX,
    check_layout,
    detect_layout,
    detector_config,
    is_mmdet_detector,
    mmdet_rename,
)
from dnl_jax.models.detection.mask_rcnn import MaskRCNN
from dnl_jax.models.residual import ContextSpec

# In-Place ABN's eps (mmdet v1's build_norm_layer default, the official configs' value).
ABN_EPS = 1e-5


def abn_norm_layers(
    state_dict: Mapping[str, Any], layout: str, abn: bool | None = None
) -> list[str]:
    """Key prefixes (e.g. 'neck.fpn_convs.0.bn') of the batch norms that are In-Place ABN
    (scale |weight| + eps; see the module docstring): all (`abn=True`), none (False), or when
    None, in the v1 layout those without `num_batches_tracked` (inplace_abn 1.0.x)."""
    check_layout(layout)
    layers = sorted(
        key[: -len(".running_var")]
        for key in state_dict
        if key.endswith(".running_var") and key[: -len("running_var")] + "weight" in state_dict
    )
    if abn is None:
        abn = layout == "mmdet_v1"
        layers = [prefix for prefix in layers if f"{prefix}.num_batches_tracked" not in state_dict]
    return layers if abn else []


def detector_for_state_dict(
    state_dict: Mapping[str, Any],
    layout: str | None = None,
    *,
    temperature: float = 0.05,
    **overrides,
):
    """The dnl_jax `MaskRCNN` for an mmdet state_dict (architecture from its keys)."""
    config = detector_config(state_dict, layout)
    if config["context"] is not None:
        spec = dict(config["context"])
        if spec["kind"] == "dnl_official":
            spec["temperature"] = temperature
        config["context"] = ContextSpec(**spec)
    return MaskRCNN(**{**config, **overrides})


def detector_template(module: Any, image_size: int = 64) -> dict:
    """Variable shapes of a `MaskRCNN` (from its cheap `build` method)."""
    image = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return mapping.plain_dict(
        jax.eval_shape(lambda: module.init(jax.random.key(0), image, method=module.build))
    )


def _first_fc_to_flax(weight: np.ndarray, channels: int) -> np.ndarray:
    """`[O, C·S·S]` with inputs in (C, S, S) order → inputs in (S, S, C) order (a shape that
    does not factor is returned as is, for the report to name)."""
    out, inputs = weight.shape
    side = int(round((inputs / channels) ** 0.5)) if channels else 0
    if side < 1 or channels * side * side != inputs:
        return weight
    return weight.reshape(out, channels, side, side).transpose(0, 2, 3, 1).reshape(out, inputs)


def is_detector_module(module: Any) -> bool:
    """Whether `module` is a dnl_jax `MaskRCNN`."""
    return isinstance(module, MaskRCNN)


def prepared_state_dict(
    state_dict: Mapping[str, Any], layout: str, module: Any, abn: bool | None = None
) -> dict:
    """The state_dict (same keys, numpy values) in our conventions: the first fc's input order,
    the deconvolution's flip, v1's background-first classes and In-Place ABN's scale |weight| +
    eps on its layers (`abn`, see `abn_norm_layers`; the module docstring has the details)."""
    out = {key: to_numpy(value) for key, value in state_dict.items()}
    for prefix in abn_norm_layers(out, layout, abn):
        weight = out[f"{prefix}.weight"]
        out[f"{prefix}.weight"] = (np.abs(weight) + ABN_EPS).astype(weight.dtype)
    roi = ROI_PREFIX[layout]
    box, mask = f"{roi}bbox_head.", f"{roi}mask_head."
    first_fc = f"{box}shared_fcs.0.weight"
    if first_fc in out and out[first_fc].ndim == 2:
        channels = module.fpn_channels if module.box_head == "2fc" else module.conv_channels
        out[first_fc] = _first_fc_to_flax(out[first_fc], channels)
    deconv = f"{mask}upsample.weight"
    if deconv in out and out[deconv].ndim == 4:
        # [C_in, C_out, kh, kw] → [C_out, C_in, kh, kw] (what `mapping` reads as [O, I, ...]).
        out[deconv] = out[deconv].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
    if layout == "mmdet_v1":
        for name in ("weight", "bias"):
            if (key := f"{box}fc_cls.{name}") in out:
                out[key] = np.roll(out[key], -1, axis=0)
            if (key := f"{box}fc_reg.{name}") in out:
                out[key] = out[key][4:]
            if (key := f"{mask}conv_logits.{name}") in out:
                out[key] = out[key][1:]
    return out


def mmdet_to_flax(
    state_dict: Mapping[str, Any],
    module: Any | None = None,
    *,
    layout: str | None = None,
    strict: bool = True,
    abn: bool | None = None,
    **build_kwargs,
) -> tuple[Any, dict, mapping.ConversionReport]:
    """mmdet Mask R-CNN state_dict → (MaskRCNN, variables, report).

    `layout` ('mmdet' or 'mmdet_v1') is detected from the keys when None. `abn`: which batch
    norms are In-Place ABN (`abn_norm_layers`; None infers it). `module` is filled as
    is; otherwise it is built from the keys (`detector_for_state_dict(state_dict, layout,
    **build_kwargs)`, e.g. `temperature`). Strict: every tensor is used and every variable
    filled, shapes checked; `strict=False` returns what matched and the report.
    """
    layout = layout or detect_layout(state_dict)
    check_layout(layout)
    if module is None:
        module = detector_for_state_dict(state_dict, layout, **build_kwargs)
    elif build_kwargs:
        raise ValueError(
            f"{sorted(build_kwargs)} only apply when the module is built here; "
            "build the module with them instead."
        )
    variables, report = mapping.torch_to_flax(
        prepared_state_dict(state_dict, layout, module, abn),
        detector_template(module),
        rename=mmdet_rename(layout),
        strict=strict,
        what=f"{layout} Mask R-CNN state_dict",
    )
    return module, variables, report


def fresh_detector_variables(module: Any, seed: int = 0) -> dict:
    """A `MaskRCNN`'s own initialisation (numpy leaves), e.g. to merge a partial load."""
    image = jnp.zeros((1, 64, 64, 3), jnp.float32)
    variables = jax.jit(lambda key: module.init(key, image, method=module.build))(
        jax.random.key(seed)
    )
    return jax.tree.map(np.asarray, mapping.plain_dict(variables))


__all__ = [
    "ABN_EPS",
    "FPN_KEY",
    "LAYOUTS",
    "abn_norm_layers",
    "detect_layout",
    "detector_config",
    "detector_for_state_dict",
    "detector_template",
    "fresh_detector_variables",
    "is_detector_module",
    "is_mmdet_detector",
    "mmdet_rename",
    "mmdet_to_flax",
    "prepared_state_dict",
]
