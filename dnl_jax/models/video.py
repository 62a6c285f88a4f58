"""3-D ResNet (C2D and I3D) with non-local / disentangled non-local blocks, for video
classification as in the original non-local network (Wang et al., CVPR 2018).

    clip [B, T, H, W, 3] → conv1 (kt×7×7, stride 1,2,2) → BN → ReLU
      → max-pool 1×3×3 (stride 1,2,2)
      → res2 → [temporal max-pool 3×1×1, stride 2] → res3 → res4 → res5
      → global average pool → dropout → fc → logits [B, K]

- C2D: every kernel is 1 in time (kt = 1): a 2-D ResNet applied per frame, mixing frames only
  through pooling and the non-local blocks.
- I3D: conv1 has kt = 5 and the first 1×1 conv of some residual blocks is inflated to 3×1×1: all
  of res2, every other block of res3 and res4 starting with the first, every other block of res5
  starting with the second (the official ResNet-50 I3D pattern, extended to the other depths).
- Context blocks: after every second residual block (1, 3, 5, ...) of res3 and res4, 5 blocks in
  ResNet-50; a `NonLocal` or `DisentangledNonLocal` block with C/2 inner channels and keys/values
  max-pooled by (1, 2, 2) in space, output BN zero-initialised.
- Layouts (`VIDEO_LAYOUTS`, not stored in weights): 'paper' is the diagram above (Wang et al.,
  Table 1: time strides only in the 3×1×1 pool after res2; NL logits scaled by 1/√C'); 'mmaction'
  is mmaction2's `_base_/models/i3d_r50.py` + its NL configs: conv1 and pool1 stride 2 in time,
  a 2×1×1 pool (stride 2, no padding) after res2, `use_scale=False` in the NL blocks, so a
  32-frame clip reaches res3 with 4 frames instead of 16. Its published checkpoints need it.

Parameter names: `backbone/conv1/kernel`, `backbone/bn1` (torchvision-style stem),
`backbone/layer{s}_{i}/...` (see residual.py; the context block `nl_block`/`dnl_block` lives in
its residual block, placement 'after_block'), `fc/{kernel,bias}` (mmaction `cls_head.fc_cls`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.core import layers
from dnl_jax.core.attention import sharded as sharded_attention
from dnl_jax.models import residual, resnet
from dnl_jax.models.residual import ContextSpec

Array = jax.Array
Dtype = Any

INFLATIONS = ("c2d", "i3d")
# Settings not stored in the weights; see the module docstring.
VIDEO_LAYOUTS = {
    "paper": dict(
        conv1_temporal_stride=1, pool1_temporal_stride=1, temporal_pool_window=3, use_scale=True
    ),
    "mmaction": dict(
        conv1_temporal_stride=2, pool1_temporal_stride=2, temporal_pool_window=2, use_scale=False
    ),
}


def every_other_block(num_blocks: Sequence[int], stages: Sequence[int] = (1, 2)) -> tuple:
    """Per-stage block indices 1, 3, 5, ... in the chosen stages (0-based: res3 = 1, res4 = 2)."""
    return tuple(tuple(range(1, n, 2)) if s in stages else () for s, n in enumerate(num_blocks))


def i3d_inflated_blocks(num_blocks: Sequence[int]) -> tuple[frozenset[int], ...]:
    """Blocks whose first conv is 3×1×1 in I3D: all of res2, even blocks of res3 and res4, odd
    blocks of res5."""
    first = (0, 0, 0, 1)
    return tuple(
        frozenset(range(n)) if s == 0 else frozenset(range(first[s], n, 2))
        for s, n in enumerate(num_blocks)
    )


def check_clip(x: Array, in_channels: int) -> None:
    """A channel-last float batch of clips `[B, T, H, W, in_channels]`."""
    resnet.check_channel_last(
        x,
        in_channels,
        what="clip",
        layout="[B, T, H, W]",
        add_axis="The video model takes clips; for single frames add a time axis, x[:, None].",
        transpose="Transpose [B, C, T, H, W] clips with x.transpose(0, 2, 3, 4, 1).",
    )


class ResNet3D(nn.Module):
    """3-D ResNet trunk: `[B, T, H, W, in_channels]` → res5 features `[B, T', H/32, W/32, C]`
    (T' = ⌈T/2⌉ with `temporal_pool`, else T; C = 8 · base_channels · expansion).

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      inflation: 'c2d' or 'i3d'.
      context: the non-local block to insert (None: a plain C2D/I3D baseline).
      context_block_indices: per-stage block indices; None = every other block of res3 and res4.
      temporal_pool: max-pool in time with stride 2 after res2 (as the paper's Table 1).
      temporal_pool_window: its window: 3 (padding 1, the paper) or 2 (no padding, mmaction2).
      conv1_temporal_stride, pool1_temporal_stride: time strides of the stem's conv and max-pool
        (1 in the paper, 2 in mmaction2's I3D).
      inflated_block_indices: per-stage indices of the blocks whose first conv is 3×1×1 (I3D);
        None = `i3d_inflated_blocks`. Ignored for 'c2d'.
      conv1_temporal_kernel: the stem conv's time extent; None = 5 (I3D) or 1 (C2D).
    """

    depth: int = 50
    inflation: str = "i3d"
    in_channels: int = 3
    stem_channels: int = 64
    base_channels: int = 64
    temporal_pool: bool = True
    temporal_pool_window: int = 3
    conv1_temporal_stride: int = 1
    pool1_temporal_stride: int = 1
    inflated_block_indices: Sequence[Sequence[int]] | None = None
    conv1_temporal_kernel: int | None = None
    context: ContextSpec | None = None
    context_block_indices: Sequence[Sequence[int]] | None = None
    axis_name: str | None = None
    frozen_bn: bool = False
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        residual.check_depth(self.depth)
        check_clip(x, self.in_channels)
        if self.inflation not in INFLATIONS:
            raise ValueError(f"unknown inflation {self.inflation!r}; choose one of {INFLATIONS}.")
        num_blocks = residual.ARCH_SETTINGS[self.depth]
        indices = self.context_block_indices
        if indices is None:
            indices = every_other_block(num_blocks)
        chosen = residual.stage_context_indices(indices if self.context else None, num_blocks)
        inflated = i3d_inflated_blocks(num_blocks)
        if self.inflated_block_indices is not None:
            inflated = residual.stage_context_indices(self.inflated_block_indices, num_blocks)
        x = self._stem(x, train)
        block = residual.block_type(self.depth)
        in_features = self.stem_channels
        for stage, blocks_in_stage in enumerate(num_blocks):
            planes = self.base_channels * 2**stage
            for index in range(blocks_in_stage):
                first = index == 0
                x = block(
                    planes=planes,
                    strides=(1, 2, 2) if first and stage > 0 else 1,
                    downsample=first and (stage > 0 or in_features != planes * block.expansion),
                    temporal_kernel=3 if self._inflate(inflated, stage, index) else 1,
                    context=self.context if index in chosen[stage] else None,
                    axis_name=self.axis_name,
                    frozen_bn=self.frozen_bn,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{index}",
                )(x, train=train)
            in_features = planes * block.expansion
            if stage == 0 and self.temporal_pool:
                x = self._temporal_pool(x)
            x = sharded_attention.constrain_positions(x)  # stage boundary (mesh 'space' axis)
        return x

    def _temporal_pool(self, x: Array) -> Array:
        """Max-pool in time, stride 2: window 3 padded by 1 (T' = ⌈T/2⌉) or window 2 unpadded
        (T' = ⌊T/2⌋)."""
        if self.temporal_pool_window not in (2, 3):
            raise ValueError(
                f"temporal_pool_window must be 2 or 3; got {self.temporal_pool_window}."
            )
        pad = 1 if self.temporal_pool_window == 3 else 0
        return nn.max_pool(
            x,
            (self.temporal_pool_window, 1, 1),
            strides=(2, 1, 1),
            padding=((pad, pad), (0, 0), (0, 0)),
        )

    def _inflate(self, inflated, stage: int, index: int) -> bool:
        return self.inflation == "i3d" and index in inflated[stage]

    def _stem(self, x: Array, train: bool) -> Array:
        """conv kt×7×7 (stride 1,2,2; PyTorch padding) → BN → ReLU → max-pool 1×3×3 (1,2,2)."""
        temporal_kernel = self.conv1_temporal_kernel or (5 if self.inflation == "i3d" else 1)
        return residual.conv7x7_stem(
            self,
            x,
            train,
            temporal_kernel=temporal_kernel,
            temporal_strides=(self.conv1_temporal_stride, self.pool1_temporal_stride),
        )


class VideoClassifier(nn.Module):
    """`ResNet3D` trunk → global average pool over (T, H, W) → dropout → `fc`.

    `__call__(clips [B, T, H, W, 3], train=False)` → `{'logits': [B, num_classes]}`.
    """

    backbone: ResNet3D
    num_classes: int
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, clips: Array, train: bool = False) -> dict[str, Array]:
        check_clip(clips, self.backbone.in_channels)
        features = self.backbone(clips, train=train)
        pooled = jnp.mean(features, axis=(1, 2, 3))
        pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
        logits = nn.Dense(
            self.num_classes, kernel_init=layers.normal_001, name="fc", dtype=self.backbone.dtype
        )(pooled)
        return {"logits": logits}


def build_video_classifier(
    depth: int = 50,
    context: str | None = "dnl",
    num_classes: int = 400,
    *,
    inflation: str = "i3d",
    base_channels: int = 64,
    stem_channels: int = 64,
    dropout_rate: float = 0.5,
    temporal_pool: bool = True,
    axis_name: str | None = None,
    frozen_bn: bool = False,
    dtype: Dtype | None = None,
    implementation: str | None = None,
    temperature: float = 0.05,
    layout: str = "paper",
    nl_mode: str = "embedded_gaussian",
    use_scale: bool | None = None,
    context_block_indices: Sequence[Sequence[int]] | None = None,
    inflated_block_indices: Sequence[Sequence[int]] | None = None,
) -> VideoClassifier:
    """A `VideoClassifier` with `context` in {'dnl', 'nl', None} blocks (sub-sampled by (1, 2, 2),
    reduction 2) after every other block of res3 and res4 (or `context_block_indices`).

    `layout` ('paper' or 'mmaction', see `VIDEO_LAYOUTS`) sets the time strides and the blocks'
    `use_scale` (an explicit `use_scale` wins); `nl_mode` is the 'nl' blocks' mode.
    """
    residual.check_depth(depth)
    if layout not in VIDEO_LAYOUTS:
        raise ValueError(f"unknown video layout {layout!r}; choose one of {sorted(VIDEO_LAYOUTS)}.")
    strides = {key: value for key, value in VIDEO_LAYOUTS[layout].items() if key != "use_scale"}
    if use_scale is None:
        use_scale = VIDEO_LAYOUTS[layout]["use_scale"]
    if inflation not in INFLATIONS:
        raise ValueError(f"unknown inflation {inflation!r}; choose one of {INFLATIONS}.")
    if context not in ("dnl", "nl", None):
        raise ValueError(
            f"context must be 'dnl', 'nl' or None for the video model; got {context!r}."
        )
    spec = None
    if context is not None:
        spec = ContextSpec(
            kind=context,
            placement="after_block",
            reduction=2,
            temperature=temperature,
            sub_sample=True,
            pool_window=(1, 2, 2),
            implementation=implementation,
            use_scale=use_scale,
            mode=nl_mode,
        )
    backbone = ResNet3D(
        depth=depth,
        inflation=inflation,
        stem_channels=stem_channels,
        base_channels=base_channels,
        temporal_pool=temporal_pool,
        context=spec,
        context_block_indices=context_block_indices,
        inflated_block_indices=inflated_block_indices,
        axis_name=axis_name,
        frozen_bn=frozen_bn,
        dtype=dtype,
        **strides,
    )
    return VideoClassifier(backbone=backbone, num_classes=num_classes, dropout_rate=dropout_rate)


__all__ = [
    "VIDEO_LAYOUTS",
    "ResNet3D",
    "VideoClassifier",
    "build_video_classifier",
    "check_clip",
    "every_other_block",
    "i3d_inflated_blocks",
]
