"""Dilated ResNet-V1c, the segmentation backbone of mmseg's DNLNet (channel-last, 2-D).

V1c = deep stem (three 3×3 convs, stem/2 → stem/2 → stem channels, the first with stride 2,
each followed by BN and ReLU) + 3×3 max-pool (stride 2), then 4 stages of residual blocks; the
identity path of a strided or widening block is a 1×1 conv (with the stride) + BN (no
average-pool down-sampling). The output stride is set by striding or dilating the last stages, as
mmseg:

    output stride   strides (stages 1-4)   dilations (stages 1-4)
         8             (1, 2, 1, 1)           (1, 1, 2, 4)
        16             (1, 2, 2, 1)           (1, 1, 1, 2)
        32             (1, 2, 2, 2)           (1, 1, 1, 1)

With `contract_dilation`, the first block of a dilated stage uses half the stage's dilation.

Parameter names ↔ mmseg `ResNetV1c` state_dict keys (prefix `backbone.` in a segmentor; see
`residual.py` for the rule and the blocks' names):

    stem_0/kernel ↔ stem.0.weight     stem_1 (BN) ↔ stem.1      (conv 3 → stem/2, stride 2)
    stem_3/kernel ↔ stem.3.weight     stem_4 (BN) ↔ stem.4      (conv stem/2 → stem/2)
    stem_6/kernel ↔ stem.6.weight     stem_7 (BN) ↔ stem.7      (conv stem/2 → stem)
    layer{s}_{i}/conv1/kernel ↔ layer{s}.{i}.conv1.weight, ..., layer{s}_{i}/downsample_0/kernel
    ↔ layer{s}.{i}.downsample.0.weight, layer{s}_{i}/downsample_1 ↔ layer{s}.{i}.downsample.1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.core import layers
from dnl_jax.core.attention import sharded as sharded_attention
from dnl_jax.models import residual
from dnl_jax.models.residual import ContextSpec

Array = jax.Array
Dtype = Any

OUTPUT_STRIDES = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}


def strides_and_dilations(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-stage (strides, dilations) of a 4-stage ResNet for an output stride in {8, 16, 32}."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {sorted(OUTPUT_STRIDES)}; got {output_stride!r}."
        )
    return OUTPUT_STRIDES[output_stride]


def check_channel_last(
    x: Array, in_channels: int, *, what: str, layout: str, add_axis: str, transpose: str
) -> None:
    """A channel-last float batch of `what`s laid out as `layout` (e.g. '[B, H, W]', to which
    the channel axis is appended); `add_axis` / `transpose` tell how to fix a wrong rank or an
    NCHW-style layout."""
    rank = layout.count(",") + 2
    full_layout = f"{layout[:-1]}, {in_channels}]"
    if x.ndim != rank:
        raise ValueError(
            f"expected channel-last {what}s {full_layout} (rank {rank}); got shape {x.shape}. "
            f"{add_axis}"
        )
    if x.shape[-1] != in_channels:
        raise ValueError(
            f"expected {in_channels} input channels (last axis, channel-last layout); got shape "
            f"{x.shape}. {transpose}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"expected a floating-point {what}; got dtype {x.dtype}. Normalise it first."
        )


def check_image(x: Array, in_channels: int, what: str = "image") -> None:
    """A channel-last float batch `[B, H, W, in_channels]`."""
    check_channel_last(
        x,
        in_channels,
        what=what,
        layout="[B, H, W]",
        add_axis="Add a batch axis with x[None] for a single image.",
        transpose="Transpose NCHW inputs with x.transpose(0, 2, 3, 1).",
    )


class ResNetV1c(nn.Module):
    """Dilated ResNet-V1c (depth 18/34/50/101/152) returning every stage's feature map.

    Input `[B, H, W, in_channels]`; output a tuple of 4 maps `[B, H/s_k, W/s_k, C_k]` with
    s = (4, 8, 8, 8) at output stride 8 (PyTorch rounding: each stride-2 step maps H to
    ⌈H/2⌉), and C_k = base_channels · 2^k · expansion (expansion 4 for depth ≥ 50, else 1).

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      output_stride: 8, 16 or 32.
      stem_channels, base_channels: widths (64 and 64 in mmseg).
      contract_dilation: halve the dilation of the first block of a dilated stage (mmseg: True).
      axis_name: batch-norm statistics axis under pmap (None under jit or on one device).
      frozen_bn: batch norm always uses running statistics (mmseg `norm_eval=True`).
      context: optional context block (`ContextSpec`) inserted into the residual blocks listed per
        stage in `context_block_indices`. The official DNL detection backbone, for example, is
        `ResNetV1c(context=ContextSpec('dnl', 'after_add', reduction=4),
        context_block_indices=((), (), (-2,), (0, 1, 2)))` (c4 block n−2 and all of c5).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    """

    depth: int = 50
    in_channels: int = 3
    stem_channels: int = 64
    base_channels: int = 64
    output_stride: int = 8
    contract_dilation: bool = True
    axis_name: str | None = None
    frozen_bn: bool = False
    zero_init_residual: bool = True
    context: ContextSpec | None = None
    context_block_indices: Sequence[Sequence[int]] | None = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, ...]:
        residual.check_depth(self.depth)
        check_image(x, self.in_channels)
        strides, dilations = strides_and_dilations(self.output_stride)
        num_blocks = residual.ARCH_SETTINGS[self.depth]
        chosen = residual.stage_context_indices(self.context_block_indices, num_blocks)
        if self.context is None and any(chosen):
            raise ValueError(
                "context_block_indices is set but context is None; give a ContextSpec."
            )
        x = sharded_attention.constrain_positions(self._stem(x, train))
        outputs = []
        in_features = self.stem_channels
        for stage, blocks_in_stage in enumerate(num_blocks):
            planes = self.base_channels * 2**stage
            x = self._stage(
                x,
                stage,
                blocks_in_stage,
                planes,
                in_features,
                strides[stage],
                dilations[stage],
                chosen[stage],
                train,
            )
            x = sharded_attention.constrain_positions(x)  # stage boundary (mesh 'space' axis)
            in_features = planes * residual.expansion(self.depth)
            outputs.append(x)
        return tuple(outputs)

    def _stem(self, x: Array, train: bool) -> Array:
        """Three 3×3 conv-BN-ReLU (stride 2, 1, 1) and a 3×3 max-pool with stride 2, padding 1."""
        half = self.stem_channels // 2
        for index, (features, stride) in enumerate([(half, 2), (half, 1), (self.stem_channels, 1)]):
            x = nn.Conv(
                features,
                (3, 3),
                strides=stride,
                padding=((1, 1), (1, 1)),
                use_bias=False,
                kernel_init=layers.kaiming_fan_out,
                dtype=self.dtype,
                name=f"stem_{3 * index}",
            )(x)
            x = layers.make_norm(
                "batch",
                train=train and not self.frozen_bn,
                axis_name=self.axis_name,
                dtype=self.dtype,
                name=f"stem_{3 * index + 1}",
            )(x)
            x = nn.relu(x)
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def _stage(
        self, x, stage, blocks_in_stage, planes, in_features, stride, dilation, chosen, train
    ) -> Array:
        block = residual.block_type(self.depth)
        out_features = planes * block.expansion
        first_dilation = dilation // 2 if (self.contract_dilation and dilation > 1) else dilation
        for index in range(blocks_in_stage):
            first = index == 0
            x = block(
                planes=planes,
                strides=stride if first else 1,
                dilation=first_dilation if first else dilation,
                downsample=first and (stride != 1 or in_features != out_features),
                context=self.context if index in chosen else None,
                axis_name=self.axis_name,
                frozen_bn=self.frozen_bn,
                zero_init_residual=self.zero_init_residual,
                dtype=self.dtype,
                name=f"layer{stage + 1}_{index}",
            )(x, train=train)
        return x


__all__ = ["ResNetV1c", "strides_and_dilations", "check_image", "OUTPUT_STRIDES"]
