"""Segmentation decode heads with mmseg's structure, channel-last `[B, H, W, C]` → `[B, H, W, K]`.

- `FCNHead`: `num_convs` conv(k×k)-BN-ReLU (in → channels → channels ...), optional `conv_cat`
  on concat([input, convs output]), channel dropout (mmseg's Dropout2d, 0.1), 1×1 `conv_seg`.
- `DNLHead` / `NLHead` / `GCHead`: FCNHead with two convs and a context block between them
  (`DisentangledNonLocal`, `NonLocal` or `ContextBlock`), concat with the input by default.

Parameter names ↔ mmseg state_dict keys (prefix `decode_head.` or `auxiliary_head.`; conv
`kernel` ↔ `weight` transposed `[O, I, kh, kw]` → `[kh, kw, I, O]`, BN `scale` ↔ `weight`,
batch_stats `mean`/`var` ↔ `running_mean`/`running_var`):

    convs_0/conv/kernel    ↔ convs.0.conv.weight      convs_0/bn ↔ convs.0.bn
    convs_1/...            ↔ convs.1....
    dnl_block/theta/conv/{kernel,bias} ↔ dnl_block.theta.conv.{weight,bias} (also phi, g)
    dnl_block/conv_mask/{kernel,bias}  ↔ dnl_block.conv_mask.{weight,bias}
    dnl_block/conv_out/conv/kernel     ↔ dnl_block.conv_out.conv.weight, dnl_block/conv_out/bn
    nl_block/...           ↔ nl_block....  (same names without conv_mask)
    gc_block/conv_mask, gc_block/channel_add_conv_{0,1,3} ↔ gc_block.conv_mask,
                                                              gc_block.channel_add_conv.{0,1,3}
    conv_cat/conv/kernel   ↔ conv_cat.conv.weight     conv_cat/bn ↔ conv_cat.bn
    conv_seg/{kernel,bias} ↔ conv_seg.{weight,bias}
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.core import blocks, blocks_official, layers

Array = jax.Array
Dtype = Any


class FCNHead(nn.Module):
    """mmseg `FCNHead`: convs → [conv_cat(concat(x, convs(x)))] → dropout → conv_seg.

    Input `[B, H, W, C_in]`, output logits `[B, H, W, num_classes]` (same resolution).

    Attributes:
      num_classes: K.
      channels: width of the convs (mmseg `channels`).
      num_convs: number of conv-BN-ReLU (0 allowed only with C_in == channels, as mmseg).
      concat_input: concatenate the input with the convs' output, then `conv_cat`.
      kernel_size, dilation: of the convs (padding kernel_size//2 · dilation).
      dropout_rate: channel dropout before `conv_seg`, only in training (needs rngs 'dropout').
    """

    num_classes: int
    channels: int = 512
    num_convs: int = 2
    concat_input: bool = True
    kernel_size: int = 3
    dilation: int = 1
    dropout_rate: float = 0.1
    axis_name: str | None = None
    frozen_bn: bool = False
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        self._check(x)
        out = x
        for index in range(self.num_convs):
            out = self._conv_module(f"convs_{index}")(out, train=train and not self.frozen_bn)
        return self._finish(x, out, train)

    def _check(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"a decode head takes channel-last features [B, H, W, C]; got shape {x.shape}."
            )
        if self.num_convs < 0 or (self.num_convs == 0 and x.shape[-1] != self.channels):
            raise ValueError(
                f"num_convs={self.num_convs} needs num_convs >= 1, or 0 with input channels "
                f"({x.shape[-1]}) == channels ({self.channels})."
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1); got {self.dropout_rate}.")

    def _conv_module(self, name: str, kernel_size: int | None = None) -> layers.ConvModule:
        """conv(k×k, no bias) → BN → ReLU, mmcv `ConvModule` names."""
        kernel_size = self.kernel_size if kernel_size is None else kernel_size
        return layers.ConvModule(
            self.channels,
            kernel_size=kernel_size,
            dilation=self.dilation,
            padding=kernel_size // 2 * self.dilation,
            norm="batch",
            activation=True,
            axis_name=self.axis_name,
            dtype=self.dtype,
            name=name,
        )

    def _finish(self, x: Array, out: Array, train: bool) -> Array:
        """conv_cat on concat([input, out]) if asked, then `cls_seg`: dropout → 1×1 conv_seg."""
        bn_train = train and not self.frozen_bn
        if self.concat_input:
            out = self._conv_module("conv_cat")(jnp.concatenate([x, out], axis=-1), train=bn_train)
        # Dropout2d drops whole channels: one mask per (sample, channel), shared over H, W.
        out = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(out)
        return nn.Conv(
            self.num_classes,
            (1, 1),
            kernel_init=layers.normal_001,
            dtype=self.dtype,
            name="conv_seg",
        )(out)


class _ContextHead(FCNHead):
    """FCN head with two convs and a context block between them (mmseg DNL/NL/GC heads)."""

    num_convs: int = 2
    concat_input: bool = True
    implementation: str | None = None

    def context_block(self) -> nn.Module:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        self._check(x)
        if self.num_convs != 2:
            raise ValueError(
                f"{type(self).__name__} has exactly 2 convs around its block; got "
                f"num_convs={self.num_convs}."
            )
        bn_train = train and not self.frozen_bn
        out = self._conv_module("convs_0")(x, train=bn_train)
        out = self.context_block()(out, train=bn_train)
        out = self._conv_module("convs_1")(out, train=bn_train)
        return self._finish(x, out, train)


class DNLHead(_ContextHead):
    """mmseg `DNLHead`: conv → `DisentangledNonLocal` (reduction 2, scaled, temperature 0.05)
    → conv → conv_cat(concat(x, ·)) → dropout → conv_seg. `pairwise=False` / `unary=False` give
    the paper's unary-only / pairwise-only ablations.

    `[B, H, W, C]` → `[B, H, W, K]`.
    """

    reduction: int = 2
    use_scale: bool = True
    temperature: float = 0.05
    pairwise: bool = True  # False: unary-only ablation (no theta/phi parameters)
    unary: bool = True  # False: pairwise-only ablation (no conv_mask parameters)

    def context_block(self) -> nn.Module:
        return blocks.DisentangledNonLocal(
            reduction=self.reduction,
            use_scale=self.use_scale,
            temperature=self.temperature,
            pairwise=self.pairwise,
            unary=self.unary,
            axis_name=self.axis_name,
            implementation=self.implementation,
            dtype=self.dtype,
            name="dnl_block",
        )


class NLHead(_ContextHead):
    """mmseg `NLHead`: as `DNLHead` with the plain embedded-Gaussian `NonLocal` block."""

    reduction: int = 2
    use_scale: bool = True

    def context_block(self) -> nn.Module:
        return blocks.NonLocal(
            reduction=self.reduction,
            use_scale=self.use_scale,
            axis_name=self.axis_name,
            implementation=self.implementation,
            dtype=self.dtype,
            name="nl_block",
        )


class GCHead(_ContextHead):
    """mmseg `GCHead`: as `DNLHead` with GCNet's `ContextBlock` (ratio 1/4, attention pooling,
    channel add)."""

    ratio: float = 1 / 4

    def context_block(self) -> nn.Module:
        return blocks.ContextBlock(ratio=self.ratio, dtype=self.dtype, name="gc_block")


class OfficialDNLHead(_ContextHead):
    """The official DNL code's `NLModule` (yinmh17 model/seg/nets/nonlocalbn.py, the same
    conv → block → conv → concat → dropout → 1×1 structure as mmseg's head, `channels` = C/4)
    around its own block (`blocks_official.OfficialDisentangledNonLocal`, reduction 2) in the
    variant `variant` ('in' or 'nowd', see `blocks_official.OFFICIAL_VARIANTS`).

    `[B, H, W, C]` → `[B, H, W, K]`; block parameters under `dnl_block/` (`conv_query`, ...).
    """

    reduction: int = 2
    variant: str = "in"

    def context_block(self) -> nn.Module:
        if self.variant not in blocks_official.OFFICIAL_VARIANTS:
            raise ValueError(
                f"unknown official DNL variant {self.variant!r}; choose one of "
                f"{sorted(blocks_official.OFFICIAL_VARIANTS)}."
            )
        return blocks_official.OfficialDisentangledNonLocal(
            reduction=self.reduction,
            implementation=self.implementation,
            dtype=self.dtype,
            name="dnl_block",
            **blocks_official.OFFICIAL_VARIANTS[self.variant],
        )


class OfficialDNLNowdHead(OfficialDNLHead):
    """`OfficialDNLHead` in the 'nowd' variant (give `NOWD_WEIGHT_DECAY` to the optimizer)."""

    variant: str = "nowd"


# Weight-decay multipliers of the 'nowd' variant (optimizer.weight_decay_multipliers).
NOWD_WEIGHT_DECAY = tuple(
    (f"dnl_block/{name}", 0.0) for name in blocks_official.NO_DECAY_PARAMETERS
)

HEADS = {
    "fcn": FCNHead,
    "dnl": DNLHead,
    "nl": NLHead,
    "gc": GCHead,
    "dnl_official": OfficialDNLHead,
    "dnl_official_nowd": OfficialDNLNowdHead,
}

__all__ = [
    "FCNHead",
    "DNLHead",
    "NLHead",
    "GCHead",
    "OfficialDNLHead",
    "OfficialDNLNowdHead",
    "HEADS",
    "NOWD_WEIGHT_DECAY",
]
