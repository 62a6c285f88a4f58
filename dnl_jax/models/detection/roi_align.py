"""RoIAlign (mmcv / torchvision semantics) over one or several FPN levels, static shapes.

Per output bin, `grid_h × grid_w` regularly spaced points are sampled bilinearly and averaged:

    start = box · spatial_scale − 0.5 (aligned) ;  bin = (end − start) / pooled
    point (iy) = start + p · bin + (iy + 0.5) · bin / grid ,   grid = ceil(bin)  (sampling_ratio 0)

A point outside [−1, size] contributes 0; inside, coordinates are clamped to the map as in
mmcv's `bilinear_interpolate`. The adaptive grid is data-dependent, so the points are laid out on
a static `grid_limit × grid_limit` lattice and masked: the result is exact whenever
ceil(bin) ≤ grid_limit (with limit 4 and the FPN level mapping, every square RoI of side up to
896 px: a RoI at level k has side < 112·2^k px, i.e. < 28 cells), and samples `grid_limit` points
per bin axis beyond that.

Levels are flattened and concatenated (`[Σ H_l·W_l, C]`) so that each RoI gathers only from its
own level: one gather per sample point, not one per level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _axis_samples(
    start: Array, bin_size: Array, grid: Array, pooled: int, size: Array, grid_limit: int
) -> tuple[Array, Array]:
    """Sample points along one axis for `[K]` RoIs: the two neighbouring cell indices
    `[K, pooled, grid_limit, 2]` (int32) and their bilinear weights (0 for masked points)."""
    p = jnp.arange(pooled, dtype=start.dtype)[None, :, None]
    g = jnp.arange(grid_limit, dtype=start.dtype)[None, None, :]
    start, bin_size = start[:, None, None], bin_size[:, None, None]
    gridf, size = grid[:, None, None].astype(start.dtype), size[:, None, None]
    coord = start + p * bin_size + (g + 0.5) * bin_size / jnp.maximum(gridf, 1)
    used = (g < gridf) & (coord >= -1.0) & (coord <= size.astype(start.dtype))
    coord = jnp.maximum(coord, 0.0)
    low = jnp.floor(coord).astype(jnp.int32)
    at_edge = low >= size - 1
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, size - 1, low + 1)
    frac = jnp.where(at_edge, 0.0, coord - low)
    weights = jnp.stack([1.0 - frac, frac], -1) * used[..., None]
    return jnp.stack([low, high], -1), weights


def align_flat(
    flat: Array,
    rois: Array,
    offsets: Array,
    heights: Array,
    widths: Array,
    scales: Array,
    output_size: tuple[int, int],
    grid_limit: int,
    aligned: bool,
) -> Array:
    """RoIAlign of `[K, 4]` RoIs, each with its own level geometry (`offsets`, `heights`,
    `widths`, `scales`: `[K]`) into flattened features `[N, C]` → `[K, ph, pw, C]`."""
    pooled_h, pooled_w = output_size
    shift = 0.5 if aligned else 0.0
    scaled = rois * scales[:, None] - shift
    roi_w, roi_h = scaled[:, 2] - scaled[:, 0], scaled[:, 3] - scaled[:, 1]
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
    grid_h = jnp.clip(jnp.ceil(bin_h), 0, grid_limit).astype(jnp.int32)
    grid_w = jnp.clip(jnp.ceil(bin_w), 0, grid_limit).astype(jnp.int32)
    ys, wy = _axis_samples(scaled[:, 1], bin_h, grid_h, pooled_h, heights, grid_limit)
    xs, wx = _axis_samples(scaled[:, 0], bin_w, grid_w, pooled_w, widths, grid_limit)
    column = lambda v: v[:, None, None, None, None, None]  # noqa: E731
    base = column(offsets) + ys[:, :, None, :, :, None] * column(widths)  # [K, ph, 1, G, 2, 1]

    # One gather per lattice point (a loop, not an unrolled sum) keeps the peak memory at
    # K·ph·pw·4·C and the program small.
    def accumulate(point, total):
        iy, ix = point // grid_limit, point % grid_limit
        index = jnp.take(base, iy, axis=3) + jnp.take(xs, ix, axis=2)[:, None, :, None, :]
        weight = (
            jnp.take(wy, iy, axis=2)[:, :, None, :, None]
            * jnp.take(wx, ix, axis=2)[:, None, :, None, :]
        )  # [K, ph, pw, 2, 2]
        values = flat[index]  # [K, ph, pw, 2, 2, C]
        return total + jnp.einsum("kpqab,kpqabc->kpqc", weight.astype(flat.dtype), values)

    total = jnp.zeros((rois.shape[0], pooled_h, pooled_w, flat.shape[-1]), flat.dtype)
    total = jax.lax.fori_loop(0, grid_limit * grid_limit, accumulate, total)
    count = jnp.maximum(grid_h * grid_w, 1).astype(flat.dtype)
    return total / count[:, None, None, None]


def roi_align(
    features: Array,
    rois: Array,
    output_size: tuple[int, int],
    spatial_scale: float,
    grid_limit: int = 4,
    aligned: bool = True,
) -> Array:
    """RoIAlign on one map: features `[H, W, C]`, rois `[K, 4]` (image pixels) →
    `[K, ph, pw, C]` (sampling_ratio 0, exact for ceil(bin) ≤ `grid_limit`)."""
    height, width = features.shape[:2]
    count = rois.shape[0]
    full = lambda value: jnp.full((count,), value)  # noqa: E731
    return align_flat(
        features.reshape(-1, features.shape[-1]),
        rois,
        full(0),
        full(height),
        full(width),
        full(spatial_scale).astype(rois.dtype),
        output_size,
        grid_limit,
        aligned,
    )


def map_roi_levels(rois: Array, num_levels: int, finest_scale: float = 56.0) -> Array:
    """mmdet `SingleRoIExtractor.map_roi_levels`: level = ⌊log2(√(w·h) / finest_scale + 1e-6)⌋
    clipped to [0, num_levels − 1]. `[..., 4]` → `[...]` int32."""
    scale = jnp.sqrt(
        jnp.maximum(rois[..., 2] - rois[..., 0], 0) * jnp.maximum(rois[..., 3] - rois[..., 1], 0)
    )
    level = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
    return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)


def multi_level_roi_align(
    features: Sequence[Array],
    rois: Array,
    output_size: tuple[int, int],
    strides: Sequence[int],
    finest_scale: float = 56.0,
    grid_limit: int = 4,
    aligned: bool = True,
) -> Array:
    """mmdet `SingleRoIExtractor` (RoIAlign, sampling_ratio 0) for one image: features, one
    `[H_l, W_l, C]` map per level with stride `strides[l]`; rois `[K, 4]` → `[K, ph, pw, C]`."""
    if len(features) != len(strides):
        raise ValueError(
            f"{len(features)} feature maps but {len(strides)} strides; give one stride per level."
        )
    sizes = [f.shape[0] * f.shape[1] for f in features]
    flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features], axis=0)
    level = map_roi_levels(rois, len(features), finest_scale)
    table = lambda values, dtype: jnp.asarray(np.asarray(values), dtype)[level]  # noqa: E731
    return align_flat(
        flat,
        rois,
        table(np.cumsum([0] + sizes[:-1]), jnp.int32),
        table([f.shape[0] for f in features], jnp.int32),
        table([f.shape[1] for f in features], jnp.int32),
        table([1.0 / s for s in strides], rois.dtype),
        output_size,
        grid_limit,
        aligned,
    )


def grid_limit_for(max_extent: float, pooled: int) -> int:
    """The lattice size that makes RoIAlign exact for every RoI up to `max_extent` cells."""
    return max(1, math.ceil(max_extent / pooled))


__all__ = ["roi_align", "map_roi_levels", "multi_level_roi_align", "grid_limit_for"]
