"""Residual blocks (basic and bottleneck) for 2-D and 3-D ResNets, with an optional context block
(non-local, disentangled non-local or global context) inserted into the block.

Channel-last inputs `[B, *spatial, C]`; the same modules serve the 2-D segmentation backbone
(`ResNetV1c`) and the 3-D video backbone (`ResNet3D`): the number of spatial dims is read from the
input, and a 3-D block may inflate its first conv in time (`temporal_kernel` 3, I3D-style).

Parameter names mirror mmseg/mmcv (PyTorch style, stride in the 3×3 conv) so that a state_dict
maps one to one (`/` ↔ `.`, trailing `_N` ↔ `.N`; conv `kernel` ↔ `weight` transposed from
`[O, I, *k]` to `[*k, I, O]`; norm `scale` ↔ `weight`; batch_stats `mean`/`var` ↔
`running_mean`/`running_var`):

    conv1/kernel            ↔ conv1.weight            bn1/{scale,bias}  ↔ bn1.{weight,bias}
    conv2, bn2, conv3, bn3  ↔ conv2, bn2, conv3, bn3  (conv3/bn3 only in the bottleneck)
    downsample_0/kernel     ↔ downsample.0.weight     (1×1 conv with the block's stride)
    downsample_1            ↔ downsample.1            (its batch norm)
    dnl_block | nl_block | gc_block | dnl_official_block   the inserted context block (its own
                                      names, see blocks.py and blocks_official.py),
                                      as the plug-in of mmdet-style detection backbones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from dnl_jax.core import blocks, blocks_official, layers

Array = jax.Array
Dtype = Any

CONTEXT_KINDS = ("dnl", "nl", "gc", "dnl_official")
PLACEMENTS = ("after_block", "after_add", "before_add")


@dataclasses.dataclass(frozen=True)
class ContextSpec:
    """Which context block to insert into a residual block, and where.

    Attributes:
      kind: 'dnl' (`DisentangledNonLocal`, mmseg's), 'nl' (`NonLocal`, embedded Gaussian), 'gc'
        (`ContextBlock`) or 'dnl_official' (`blocks_official.OfficialDisentangledNonLocal`: the
        paper's own code, as in the official DNL detection backbone; channel whitening, scale
        1/√C', `temperature`, value C → C, no output conv, scalar gamma on the pairwise term).
      placement: 'after_block' (after the block's final ReLU, as the video non-local network),
        'after_add' (after the residual add, before the final ReLU, as the official DNL detection
        code) or 'before_add' (on the residual branch after the last BN, as GCNet's mmdet code).
      reduction: inner channels = C // reduction for 'dnl'/'nl' (2 in mmseg and the video network,
        4 in the detection code).
      temperature: 'dnl' and 'dnl_official' only.
      sub_sample: max-pool keys and values by `pool_window` (video: (1, 2, 2)).
      ratio: 'gc' bottleneck ratio.
      implementation: attention implementation passed to `dnl_jax.core.attention.dnl_attention`.
      use_scale: 'dnl'/'nl': divide the pairwise logits by √C' (mmaction2's video configs: False).
      mode: 'nl' only: 'embedded_gaussian' or 'dot_product' (mmcv `NonLocal3d`'s `mode`).
    """

    kind: str = "dnl"
    placement: str = "after_block"
    reduction: int = 2
    temperature: float = 0.05
    sub_sample: bool = False
    pool_window: tuple[int, ...] | None = None
    ratio: float = 1 / 4
    implementation: str | None = None
    use_scale: bool = True
    mode: str = "embedded_gaussian"

    def __post_init__(self):
        if self.kind not in CONTEXT_KINDS:
            raise ValueError(
                f"unknown context block kind {self.kind!r}; choose one of {CONTEXT_KINDS}."
            )
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; choose one of {PLACEMENTS}.")

    @property
    def module_name(self) -> str:
        return f"{self.kind}_block"

    def build(self, axis_name: str | None, dtype: Dtype | None) -> nn.Module:
        """The block, named `{kind}_block` (call it inside a compact method)."""
        if self.kind == "gc":
            return blocks.ContextBlock(ratio=self.ratio, dtype=dtype, name=self.module_name)
        if self.kind == "dnl_official":
            if self.sub_sample:
                raise ValueError(
                    "ContextSpec('dnl_official') has no sub-sampling (the official "
                    "detection configs use downsample=False); set sub_sample=False."
                )
            return blocks_official.OfficialDisentangledNonLocal(
                reduction=self.reduction,
                whiten="channel",
                use_scale=self.use_scale,
                temperature=self.temperature,
                implementation=self.implementation,
                dtype=dtype,
                name=self.module_name,
            )
        common = dict(
            reduction=self.reduction,
            sub_sample=self.sub_sample,
            pool_window=self.pool_window,
            axis_name=axis_name,
            implementation=self.implementation,
            use_scale=self.use_scale,
            dtype=dtype,
            name=self.module_name,
        )
        if self.kind == "nl":
            return blocks.NonLocal(mode=self.mode, **common)
        return blocks.DisentangledNonLocal(temperature=self.temperature, **common)


class _ResidualBase(nn.Module):
    """Shared attributes and helpers of `BasicBlock` and `Bottleneck`.

    Attributes:
      planes: width of the block's inner convs (output = planes · expansion).
      strides: spatial stride of the block, one int per spatial dim (or an int for all).
      dilation: dilation of the 3×3 conv (padding = dilation, so the size only depends on stride).
      downsample: project the identity with a 1×1 conv (stride) + BN (mmseg V1c, avg_down=False).
      temporal_kernel: 3-D only: time extent of the first conv (1 = C2D, 3 = I3D inflation).
      context: optional context block inserted into this block.
      frozen_bn: use running statistics even in training (mmseg `norm_eval`).
      zero_init_residual: the last BN's scale starts at 0 (mmseg's default), so the block starts
        as identity + ReLU.
    """

    planes: int
    strides: Any = 1
    dilation: int = 1
    downsample: bool = False
    temporal_kernel: int = 1
    context: ContextSpec | None = None
    axis_name: str | None = None
    frozen_bn: bool = False
    zero_init_residual: bool = True
    dtype: Dtype | None = None

    def _conv(
        self,
        x: Array,
        features: int,
        kernel: int,
        name: str,
        strides: Any = 1,
        dilation: int = 1,
        temporal_kernel: int = 1,
    ) -> Array:
        """Bias-free conv, PyTorch padding (kernel//2·dilation); 3-D convs get `temporal_kernel`
        in time (padded by temporal_kernel//2) and no stride or dilation in time unless given."""
        nd = x.ndim - 2
        window = (kernel,) * min(nd, 2)
        dilations = (dilation,) * min(nd, 2)
        if nd == 3:
            window = (temporal_kernel,) + window
            dilations = (1,) + dilations
        padding = [((w - 1) * d // 2,) * 2 for w, d in zip(window, dilations, strict=False)]
        return nn.Conv(
            features,
            window,
            strides=_spatial_tuple(strides, nd),
            kernel_dilation=dilations,
            padding=padding,
            use_bias=False,
            kernel_init=layers.kaiming_fan_out,
            dtype=self.dtype,
            conv_general_dilated=layers.conv_or_pointwise_matmul,
            name=name,
        )(x)

    def _norm(self, x: Array, name: str, train: bool, zero_init: bool = False) -> Array:
        """Batch norm over channels; frozen (running statistics) when `frozen_bn`. `zero_init`
        zeroes the scale (the bias starts at 0 anyway), as mmcv's `constant_init(norm, 0)`."""
        return layers.make_norm(
            "batch",
            train=train and not self.frozen_bn,
            zero_init=zero_init,
            axis_name=self.axis_name,
            dtype=self.dtype,
            name=name,
        )(x)

    def _identity(self, x: Array, features: int, train: bool) -> Array:
        if not self.downsample:
            return x
        identity = self._conv(x, features, 1, "downsample_0", strides=self.strides)
        return self._norm(identity, "downsample_1", train)

    def _finish(self, out: Array, identity: Array, train: bool) -> Array:
        """Residual add and final ReLU, with the context block at its placement."""
        block = self.context.build(self.axis_name, self.dtype) if self.context else None
        if block is not None and self.context.placement == "before_add":
            out = block(out, train=train)
        out = out + identity
        if block is not None and self.context.placement == "after_add":
            out = block(out, train=train)
        out = nn.relu(out)
        if block is not None and self.context.placement == "after_block":
            out = block(out, train=train)
        return out


class BasicBlock(_ResidualBase):
    """conv3×3(stride, dilation) → BN → ReLU → conv3×3 → BN, + identity, ReLU (expansion 1).

    As mmseg's `BasicBlock`, the second 3×3 conv is not dilated (padding 1).
    Input `[B, *spatial, C]`, output `[B, *spatial / stride, planes]`.
    """

    expansion = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        out = self._conv(
            x,
            self.planes,
            3,
            "conv1",
            strides=self.strides,
            dilation=self.dilation,
            temporal_kernel=self.temporal_kernel,
        )
        out = nn.relu(self._norm(out, "bn1", train))
        out = self._conv(out, self.planes, 3, "conv2")
        out = self._norm(out, "bn2", train, zero_init=self.zero_init_residual)
        return self._finish(out, self._identity(x, self.planes, train), train)


class Bottleneck(_ResidualBase):
    """conv1×1 → BN → ReLU → conv3×3(stride, dilation) → BN → ReLU → conv1×1 (4·planes)
    → BN, + identity, ReLU (PyTorch style: the stride sits in the 3×3 conv).

    Input `[B, *spatial, C]`, output `[B, *spatial / stride, 4·planes]`.
    """

    expansion = 4

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        features = self.planes * self.expansion
        out = self._conv(x, self.planes, 1, "conv1", temporal_kernel=self.temporal_kernel)
        out = nn.relu(self._norm(out, "bn1", train))
        out = self._conv(out, self.planes, 3, "conv2", strides=self.strides, dilation=self.dilation)
        out = nn.relu(self._norm(out, "bn2", train))
        out = self._conv(out, features, 1, "conv3")
        out = self._norm(out, "bn3", train, zero_init=self.zero_init_residual)
        return self._finish(out, self._identity(x, features, train), train)


def _spatial_tuple(strides: Any, nd: int) -> tuple[int, ...]:
    """An int stride applies to the 2 image dims (never to time); a tuple is taken as is."""
    if isinstance(strides, int):
        return ((1,) if nd == 3 else ()) + (strides,) * min(nd, 2)
    strides = tuple(strides)
    if len(strides) != nd:
        raise ValueError(f"strides {strides} need one entry per spatial dim ({nd}).")
    return strides


def block_type(depth: int) -> type[_ResidualBase]:
    return BasicBlock if depth < 50 else Bottleneck


# (block type, blocks per stage) per ResNet depth, as torchvision/mmseg.
ARCH_SETTINGS: dict[int, Sequence[int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def check_depth(depth: int) -> None:
    if depth not in ARCH_SETTINGS:
        raise ValueError(
            f"unsupported ResNet depth {depth}; choose one of {sorted(ARCH_SETTINGS)}."
        )


def expansion(depth: int) -> int:
    return block_type(depth).expansion


def stage_context_indices(
    indices: Sequence[Sequence[int]] | None, num_blocks: Sequence[int]
) -> list[frozenset[int]]:
    """Normalises a per-stage list of block indices (negatives count from the end) into sets."""
    if indices is None:
        return [frozenset()] * len(num_blocks)
    if len(indices) != len(num_blocks):
        raise ValueError(
            f"context_block_indices needs one entry per stage ({len(num_blocks)}); got "
            f"{len(indices)}: {indices}."
        )
    out = []
    for stage, (chosen, n) in enumerate(zip(indices, num_blocks, strict=False)):
        normalised = set()
        for i in chosen:
            if not -n <= i < n:
                raise ValueError(
                    f"stage {stage + 1} has {n} blocks; block index {i} is out of range."
                )
            normalised.add(i % n)
        out.append(frozenset(normalised))
    return out


__all__ = [
    "ContextSpec",
    "BasicBlock",
    "Bottleneck",
    "ARCH_SETTINGS",
    "block_type",
    "check_depth",
    "expansion",
    "stage_context_indices",
    "CONTEXT_KINDS",
    "PLACEMENTS",
]


def conv7x7_stem(
    module: nn.Module,
    x: Array,
    train: bool,
    temporal_kernel: int = 0,
    temporal_strides: tuple[int, int] = (1, 1),
) -> Array:
    """torchvision's stem inside `module`'s compact context: conv 7×7 (stride 2, padding 3, no
    bias) → BN → ReLU → 3×3 max-pool (stride 2, padding 1); names `conv1`, `bn1`.

    `temporal_kernel` > 0 adds a leading time axis for clips `[B, T, H, W, C]` (kernel
    `temporal_kernel` with 'same' padding; the pool's window is 1 in time), as the video
    ResNet's C2D (1) and I3D (5) stems; `temporal_strides` = (conv, pool) strides in time
    (mmaction2's I3D: (2, 2)). `module` supplies `stem_channels`, `dtype`, `axis_name` and
    `frozen_bn`.
    """
    time = (temporal_kernel,) if temporal_kernel else ()
    time_pad = ((temporal_kernel // 2,) * 2,) if temporal_kernel else ()
    conv_stride, pool_stride = ((s,) for s in temporal_strides) if temporal_kernel else ((), ())
    unit = (1,) if temporal_kernel else ()
    x = nn.Conv(
        module.stem_channels,
        time + (7, 7),
        strides=conv_stride + (2, 2),
        padding=time_pad + ((3, 3), (3, 3)),
        use_bias=False,
        kernel_init=layers.kaiming_fan_out,
        dtype=module.dtype,
        name="conv1",
    )(x)
    x = layers.make_norm(
        "batch",
        train=train and not module.frozen_bn,
        axis_name=module.axis_name,
        dtype=module.dtype,
        name="bn1",
    )(x)
    x = nn.relu(x)
    no_pad = ((0, 0),) if temporal_kernel else ()
    return nn.max_pool(
        x, unit + (3, 3), strides=pool_stride + (2, 2), padding=no_pad + ((1, 1), (1, 1))
    )
