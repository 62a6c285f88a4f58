"""The detector's necks and heads (Flax linen, channel-last), with mmdet 3.x's structure for the
Mask R-CNN R50-FPN config:

    FPN           1×1 lateral (bias) per backbone level, top-down nearest ×2 upsampling and add,
                  3×3 output conv (bias) per level, P6 = max-pool(kernel 1, stride 2) of P5.
                  With norm 'batch' (mmdet's FPN with a norm_cfg, the official DNL configs)
                  every lateral and output conv is mmcv's ConvModule without activation: conv
                  without bias, then batch norm; the max-pooled P6 has no conv and no norm.
    RPNHead       shared over levels: 3×3 conv + ReLU, 1×1 objectness (A, sigmoid) and 1×1
                  deltas (4A); init N(0, 0.01).
    BoxHead       '2fc' (Shared2FCBBoxHead: flatten → fc 1024 → fc 1024) or '4conv1fc'
                  (Shared4Conv1FCBBoxHead: four 3×3 convs → fc 1024), then fc_cls (K + 1, the
                  last is background) and fc_reg (4K, class-specific).
    FCNMaskHead   four 3×3 convs 256 + ReLU → 2×2 deconv stride 2 + ReLU → 1×1 conv (K);
                  with norm 'batch' the four convs are conv (no bias) → batch norm → ReLU, the
                  deconv and the 1×1 conv keep their bias and have no norm.

Flattened RoI features are `[7, 7, C]` here (`[C, 7, 7]` in PyTorch): a weight converter permutes
the first fc's input rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.core import layers

Array = jax.Array
Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
BOX_HEADS = ("2fc", "4conv1fc")


class FPN(nn.Module):
    """Backbone maps (finest first) `[B, H/s_l, W/s_l, C_l]` → `num_outs` maps with
    `channels` channels; the extra levels max-pool the coarsest output (mmdet
    add_extra_convs=False). Sizes must halve exactly from level to level (pad images to a
    multiple of the coarsest stride).

    Attributes:
      norm: None (a biased conv named `lateral_convs_{i}` / `fpn_convs_{i}`) or 'batch' (a
        `ConvModule` of that name: `conv` without bias, then `bn`, batch norm over
        `axis_name` when training).
    """

    channels: int = 256
    num_outs: int = 5
    norm: str | None = None
    axis_name: str | None = None
    dtype: Dtype | None = None

    def _conv(self, kernel: int, name: str, x: Array, train: bool) -> Array:
        if self.norm is None:
            return nn.Conv(
                self.channels,
                (kernel, kernel),
                padding=kernel // 2,
                kernel_init=xavier_uniform,
                dtype=self.dtype,
                conv_general_dilated=layers.conv_or_pointwise_matmul,
                name=name,
            )(x)
        return layers.ConvModule(
            self.channels,
            kernel,
            padding=kernel // 2,
            norm=self.norm,
            kernel_init=xavier_uniform,
            axis_name=self.axis_name,
            dtype=self.dtype,
            name=name,
        )(x, train=train)

    @nn.compact
    def __call__(self, inputs: Sequence[Array], train: bool = False) -> tuple[Array, ...]:
        laterals = [self._conv(1, f"lateral_convs_{i}", x, train) for i, x in enumerate(inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            finer, coarser = laterals[i - 1], laterals[i]
            if finer.shape[1:3] != (2 * coarser.shape[1], 2 * coarser.shape[2]):
                raise ValueError(
                    f"FPN levels {finer.shape[1:3]} and {coarser.shape[1:3]} do not halve "
                    "exactly; pad images to a multiple of the backbone's output stride (32)."
                )
            upsampled = jnp.repeat(jnp.repeat(coarser, 2, axis=1), 2, axis=2)
            laterals[i - 1] = finer + upsampled
        outs = [self._conv(3, f"fpn_convs_{i}", x, train) for i, x in enumerate(laterals)]
        while len(outs) < self.num_outs:
            outs.append(outs[-1][:, ::2, ::2])
        return tuple(outs)


class RPNHead(nn.Module):
    """One FPN map `[B, H, W, C]` → objectness logits `[B, H·W·A]` and deltas
    `[B, H·W·A, 4]` (anchor order (y, x, anchor), as `anchors.grid_anchors`)."""

    num_anchors: int = 3
    channels: int = 256
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        conv = lambda features, kernel, name: nn.Conv(  # noqa: E731
            features,
            (kernel, kernel),
            padding=kernel // 2,
            kernel_init=layers.normal_001,
            dtype=self.dtype,
            conv_general_dilated=layers.conv_or_pointwise_matmul,
            name=name,
        )
        x = nn.relu(conv(self.channels, 3, "rpn_conv")(x))
        logits = conv(self.num_anchors, 1, "rpn_cls")(x)
        deltas = conv(4 * self.num_anchors, 1, "rpn_reg")(x)
        batch = x.shape[0]
        return logits.reshape(batch, -1), deltas.reshape(batch, -1, 4)


class BoxHead(nn.Module):
    """RoI features `[..., 7, 7, C]` → class logits `[..., K + 1]` and class-specific deltas
    `[..., 4K]`.

    Attributes:
      kind: '2fc' (mmdet's standard) or '4conv1fc' (the official DNL detection code).
      norm: None or 'batch' for the 4 convs (the official code uses synced batch norm).
    """

    num_classes: int
    kind: str = "2fc"
    conv_channels: int = 256
    fc_channels: int = 1024
    norm: str | None = None
    axis_name: str | None = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
        if self.kind not in BOX_HEADS:
            raise ValueError(f"unknown box head {self.kind!r}; choose one of {BOX_HEADS}.")
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        num_convs, num_fcs = (0, 2) if self.kind == "2fc" else (4, 1)
        for i in range(num_convs):
            x = layers.ConvModule(
                self.conv_channels,
                3,
                padding=1,
                norm=self.norm,
                activation=True,
                axis_name=self.axis_name,
                dtype=self.dtype,
                name=f"shared_convs_{i}",
            )(x, train=train)
        x = x.reshape(x.shape[0], -1)
        for i in range(num_fcs):
            x = nn.relu(
                nn.Dense(
                    self.fc_channels,
                    kernel_init=xavier_uniform,
                    dtype=self.dtype,
                    name=f"shared_fcs_{i}",
                )(x)
            )
        logits = nn.Dense(
            self.num_classes + 1, kernel_init=layers.normal_001, dtype=self.dtype, name="fc_cls"
        )(x)
        deltas = nn.Dense(
            4 * self.num_classes,
            kernel_init=nn.initializers.normal(0.001),
            dtype=self.dtype,
            name="fc_reg",
        )(x)
        return logits.reshape(lead + logits.shape[-1:]), deltas.reshape(lead + deltas.shape[-1:])


class MaskHead(nn.Module):
    """mmdet `FCNMaskHead`: RoI features `[..., 14, 14, C]` → mask logits `[..., 28, 28, K]`.

    Attributes:
      norm: None or 'batch' for the convs (the official DNL configs use synced batch norm);
        batch norm over `axis_name` when training.
    """

    num_classes: int
    channels: int = 256
    num_convs: int = 4
    norm: str | None = None
    axis_name: str | None = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        for i in range(self.num_convs):
            x = layers.ConvModule(
                self.channels,
                3,
                padding=1,
                norm=self.norm,
                activation=True,
                axis_name=self.axis_name,
                dtype=self.dtype,
                name=f"convs_{i}",
            )(x, train=train)
        x = nn.relu(
            nn.ConvTranspose(
                self.channels,
                (2, 2),
                strides=(2, 2),
                padding="VALID",
                kernel_init=layers.kaiming_fan_out,
                dtype=self.dtype,
                name="upsample",
            )(x)
        )
        x = nn.Conv(
            self.num_classes,
            (1, 1),
            kernel_init=layers.kaiming_fan_out,
            dtype=self.dtype,
            conv_general_dilated=layers.conv_or_pointwise_matmul,
            name="conv_logits",
        )(x)
        return x.reshape(lead + x.shape[1:])


__all__ = ["FPN", "RPNHead", "BoxHead", "MaskHead", "BOX_HEADS"]
