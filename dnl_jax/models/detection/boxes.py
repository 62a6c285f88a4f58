"""Box arithmetic on `[..., 4]` arrays in (x1, y1, x2, y2) pixel coordinates.

Conventions are mmdet 2.x/3.x's (no legacy +1 in widths and areas): width = x2 − x1.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array

# mmdet DeltaXYWHBBoxCoder's default: log(1000 / 16), the largest |dw|, |dh| a decode accepts.
DEFAULT_WH_RATIO_CLIP = 16 / 1000


def box_area(boxes: Array) -> Array:
    """`[..., 4]` → `[...]`, zero for degenerate boxes."""
    return jnp.clip(boxes[..., 2] - boxes[..., 0], 0) * jnp.clip(boxes[..., 3] - boxes[..., 1], 0)


def box_iou(boxes_a: Array, boxes_b: Array, eps: float = 1e-6) -> Array:
    """Pairwise IoU `[..., N, 4]` × `[..., M, 4]` → `[..., N, M]` (mmdet `bbox_overlaps`, mode
    'iou': union clamped below by `eps`, so two empty boxes have IoU 0)."""
    a = boxes_a[..., :, None, :]
    b = boxes_b[..., None, :, :]
    top_left = jnp.maximum(a[..., :2], b[..., :2])
    bottom_right = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.clip(bottom_right - top_left, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes_a)[..., :, None] + box_area(boxes_b)[..., None, :] - inter
    return inter / jnp.maximum(union, eps)


def clip_boxes(boxes: Array, image_size: Array) -> Array:
    """Clips `[..., 4]` boxes to an image of `image_size` = (height, width) (broadcastable to
    `[..., 2]`), as mmdet: x in [0, W], y in [0, H]."""
    image_size = jnp.asarray(image_size, boxes.dtype)
    height, width = image_size[..., 0:1], image_size[..., 1:2]
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def _centre_size(boxes: Array) -> tuple[Array, Array, Array, Array]:
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * width, boxes[..., 1] + 0.5 * height, width, height


@dataclasses.dataclass(frozen=True)
class DeltaBoxCoder:
    """mmdet's `DeltaXYWHBBoxCoder` (non-legacy): deltas (dx, dy, dw, dh) of a target box
    relative to a reference box, normalised by `means` / `stds`:

        dx = (gx − px) / pw,  dy = (gy − py) / ph,  dw = log(gw / pw),  dh = log(gh / ph),
        delta = (d − means) / stds;

    decoding clamps dw, dh to ±|log(wh_ratio_clip)| before exp. The RPN uses stds 1, the RoI
    box head stds (0.1, 0.1, 0.2, 0.2) (mmdet's Mask R-CNN R50-FPN config).
    """

    means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    wh_ratio_clip: float = DEFAULT_WH_RATIO_CLIP

    def encode(self, references: Array, targets: Array) -> Array:
        """References and targets `[..., 4]` (positive widths/heights) → deltas `[..., 4]`."""
        px, py, pw, ph = _centre_size(jnp.asarray(references))
        gx, gy, gw, gh = _centre_size(jnp.asarray(targets))
        deltas = jnp.stack(
            [(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1
        )
        return (deltas - jnp.asarray(self.means)) / jnp.asarray(self.stds)

    def decode(self, references: Array, deltas: Array, image_size: Array | None = None) -> Array:
        """References `[..., 4]` and deltas `[..., 4]` → boxes `[..., 4]`, clipped to
        `image_size` = (height, width) when given."""
        references, deltas = jnp.asarray(references), jnp.asarray(deltas)
        stds, means = jnp.asarray(self.stds, deltas.dtype), jnp.asarray(self.means, deltas.dtype)
        deltas = deltas * stds + means
        max_ratio = abs(math.log(self.wh_ratio_clip))
        dw = jnp.clip(deltas[..., 2], -max_ratio, max_ratio)
        dh = jnp.clip(deltas[..., 3], -max_ratio, max_ratio)
        px, py, pw, ph = _centre_size(references)
        gx, gy = px + pw * deltas[..., 0], py + ph * deltas[..., 1]
        gw, gh = pw * jnp.exp(dw), ph * jnp.exp(dh)
        boxes = jnp.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], axis=-1)
        return boxes if image_size is None else clip_boxes(boxes, image_size)


RPN_CODER = DeltaBoxCoder()
RCNN_CODER = DeltaBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))

__all__ = ["box_area", "box_iou", "clip_boxes", "DeltaBoxCoder", "RPN_CODER", "RCNN_CODER"]
