"""Segmentation inference as the published numbers were obtained: whole-image, sliding-window and
multi-scale + flip (pure host code around a predict function).

Inference is model-agnostic: it takes `predict_fn(images f32 [B, h, w, 3]) -> logits
[B, h', w', K]` (any array type; logits at another resolution are resized bilinearly to the
input's), so the same code serves a Flax model, an imported PyTorch one or a test's fake.

Sliding window (mmseg `slide_inference`): windows of `crop_size` = (ch, cw) every `stride` =
(sh, sw), the last row/column shifted back to end at the border; per pixel, the logits of all
windows covering it are averaged:  logits(p) = Σ_{w ∋ p} logits_w(p) / #{w ∋ p}.
Multi-scale + flip (mmseg `aug_test`): the image is resized by each ratio in `scales` (and
mirrored if `flip`), inferred (whole or slide), mirrored back, resized to the output size, and the
softmax probabilities are averaged over all views.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from dnl_jax.core.ops import host_softmax as softmax
from dnl_jax.evaluators.common import PredictFn
from dnl_jax.models.segmentor import resize_bilinear

MODES = ("whole", "slide")


def resize(x: np.ndarray, size: Sequence[int], *, align_corners: bool = False) -> np.ndarray:
    """`resize_bilinear` of host `[B, H, W, C]` to `[B, *size, C]`, float32 numpy."""
    if tuple(x.shape[1:3]) == tuple(size):
        return np.asarray(x)
    return np.asarray(resize_bilinear(jnp.asarray(x, jnp.float32), size, align_corners))


def whole_inference(
    predict_fn: PredictFn, images: np.ndarray, *, align_corners: bool = False
) -> np.ndarray:
    """`[B, H, W, 3]` → logits `[B, H, W, K]` from one call on the whole images."""
    return resize(np.asarray(predict_fn(images)), images.shape[1:3], align_corners=align_corners)


def sliding_windows(
    height: int, width: int, crop_size: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window, all of size min(crop, image) per axis (mmseg's grid)."""
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    if min(crop_h, crop_w, stride_h, stride_w) < 1:
        raise ValueError(f"crop_size {tuple(crop_size)} and stride {tuple(stride)} must be >= 1.")
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return boxes


def slide_inference(
    predict_fn: PredictFn,
    images: np.ndarray,
    *,
    crop_size: Sequence[int],
    stride: Sequence[int],
    window_batch: int = 8,
    align_corners: bool = False,
) -> np.ndarray:
    """`[B, H, W, 3]` → logits `[B, H, W, K]` averaged over overlapping windows.

    Windows (of all images) go to `predict_fn` in batches of `window_batch`.
    """
    batch, height, width = images.shape[:3]
    boxes = sliding_windows(height, width, crop_size, stride)
    crops = np.stack([images[b, y1:y2, x1:x2] for b in range(batch) for y1, y2, x1, x2 in boxes])
    outputs = [
        whole_inference(predict_fn, crops[i : i + window_batch], align_corners=align_corners)
        for i in range(0, len(crops), window_batch)
    ]
    window_logits = np.concatenate(outputs)
    logits = np.zeros((batch, height, width, window_logits.shape[-1]), np.float32)
    counts = np.zeros((1, height, width, 1), np.float32)
    for y1, y2, x1, x2 in boxes:
        counts[:, y1:y2, x1:x2] += 1
    for index, (b, (y1, y2, x1, x2)) in enumerate((b, box) for b in range(batch) for box in boxes):
        logits[b, y1:y2, x1:x2] += window_logits[index]
    return logits / counts


def predict_scores(
    predict_fn: PredictFn,
    images: np.ndarray,
    *,
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    output_size: Sequence[int] | None = None,
    align_corners: bool = False,
) -> np.ndarray:
    """Class scores `[B, *output_size, K]` (default output size: the images').

    One view (scales == (1.0,), no flip): the logits. Several views: the mean softmax
    probabilities over scales x flips (module docstring). Argmax gives the prediction either way.
    """
    if mode not in MODES:
        raise ValueError(f"eval mode {mode!r}; choose one of {MODES}.")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError(
            "eval mode 'slide' needs eval.crop_size and eval.stride, e.g. "
            "(512, 1024) and (341, 683) for Cityscapes."
        )
    height, width = images.shape[1:3]
    output_size = tuple(output_size or (height, width))
    flips = (False, True) if flip else (False,)
    views = [(s, f) for s in scales for f in flips]
    resized = lambda x, size: resize(x, size, align_corners=align_corners)  # noqa: E731
    total = None
    for scale, flipped in views:
        size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        view = resized(images, size)
        view = view[:, :, ::-1] if flipped else view
        if mode == "slide":
            logits = slide_inference(
                predict_fn, view, crop_size=crop_size, stride=stride, align_corners=align_corners
            )
        else:
            logits = whole_inference(predict_fn, view, align_corners=align_corners)
        logits = resized(logits[:, :, ::-1] if flipped else logits, output_size)
        scores = logits if len(views) == 1 else softmax(logits)
        total = scores if total is None else total + scores
    return total / len(views)
