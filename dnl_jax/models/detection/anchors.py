"""Anchors with mmdet's `AnchorGenerator` semantics (mmdet 2.x/3.x, Mask R-CNN R50-FPN config:
strides (4, 8, 16, 32, 64), scales (8,), ratios (0.5, 1, 2), center_offset 0, scale-major).

Base anchors of a level with stride s sit centred on (0, 0): for ratio r, h_ratio = √r,
w_ratio = 1/√r, and for each ratio (outer) and scale (inner) the box of width s·w_ratio·scale and
height s·h_ratio·scale. The grid shifts them by (x·s, y·s) over the feature map; the flattened
order is (y, x, anchor), matching a head output `[B, H, W, A]` reshaped to `[B, H·W·A]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MASK_RCNN_STRIDES = (4, 8, 16, 32, 64)
MASK_RCNN_SCALES = (8.0,)
MASK_RCNN_RATIOS = (0.5, 1.0, 2.0)


def base_anchors(
    stride: float,
    scales: Sequence[float] = MASK_RCNN_SCALES,
    ratios: Sequence[float] = MASK_RCNN_RATIOS,
) -> np.ndarray:
    """`[len(ratios) · len(scales), 4]` anchors centred on (0, 0) (float32)."""
    h_ratios = np.sqrt(np.asarray(ratios, np.float64))
    w_ratios = 1.0 / h_ratios
    scales = np.asarray(scales, np.float64)
    widths = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    heights = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.stack([-0.5 * widths, -0.5 * heights, 0.5 * widths, 0.5 * heights], 1).astype(
        np.float32
    )


def grid_anchors(
    feature_size: tuple[int, int],
    stride: float,
    scales: Sequence[float] = MASK_RCNN_SCALES,
    ratios: Sequence[float] = MASK_RCNN_RATIOS,
) -> np.ndarray:
    """All anchors of one level: feature map (H, W) → `[H · W · A, 4]` in (y, x, anchor) order."""
    height, width = feature_size
    ys, xs = np.meshgrid(np.arange(height) * stride, np.arange(width) * stride, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).astype(np.float32)
    return (shifts + base_anchors(stride, scales, ratios)[None]).reshape(-1, 4)


def multi_level_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[float] = MASK_RCNN_STRIDES,
    scales: Sequence[float] = MASK_RCNN_SCALES,
    ratios: Sequence[float] = MASK_RCNN_RATIOS,
) -> list[np.ndarray]:
    """One `[H_l · W_l · A, 4]` array per level. Anchors depend only on static shapes, so they
    are NumPy constants folded into the compiled program."""
    if len(feature_sizes) != len(strides):
        raise ValueError(
            f"got {len(feature_sizes)} feature maps but {len(strides)} anchor strides; give one "
            "stride per FPN level."
        )
    return [
        grid_anchors(size, stride, scales, ratios)
        for size, stride in zip(feature_sizes, strides, strict=False)
    ]


__all__ = [
    "base_anchors",
    "grid_anchors",
    "multi_level_anchors",
    "MASK_RCNN_STRIDES",
    "MASK_RCNN_SCALES",
    "MASK_RCNN_RATIOS",
]
