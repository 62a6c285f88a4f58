"""Training augmentation and evaluation preprocessing as mmseg's pipelines, in NumPy.

Every random function takes a `np.random.Generator`, so an example's augmentation is a pure
function of (example, seed): grain's `RandomMap` hands each element a generator derived from
the pipeline seed and the element's index, which makes the stream reproducible and resumable.

Segmentation training (mmseg `train_pipeline`, order as there):
  random_resize (ratio 0.5-2.0 of `base_size`, aspect kept) → random_crop (cat_max_ratio 0.75)
  → random_flip (p 0.5) → photometric_distortion → normalize → pad_to (image 0, label 255)
Evaluation: resize_keep_ratio to `base_size` (Cityscapes' 2048x1024 stays as it is) → normalize.

Resizing uses PIL (bilinear for images, nearest for labels); mmcv uses OpenCV, whose bilinear
filter differs from PIL's by a few grey levels when downsampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from dnl_jax import IGNORE_LABEL  # noqa: E402  (one definition, re-exported here)

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale, as mmseg's img_norm_cfg
IMAGENET_STD = (58.395, 57.12, 57.375)


def rescale_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """Largest (h, w) with the aspect kept, long edge <= max(scale), short edge <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 image `[H, W, 3]` (bilinear) and label `[H, W]` (nearest) to `size` = (h, w)."""
    height, width = size
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    if label is not None:
        label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
    return image, label


def resize_keep_ratio(image, label, base_size: Sequence[int]):
    """Resizes to `rescale_size(H, W, base_size)`."""
    return resize(image, label, rescale_size(*image.shape[:2], base_size))


def random_resize(
    image,
    label,
    rng: np.random.Generator,
    *,
    base_size: Sequence[int],
    ratio_range: tuple[float, float] = (0.5, 2.0),
):
    """mmseg Resize(img_scale=base_size, ratio_range): scale base_size by r ~ U(ratio_range)."""
    ratio = rng.uniform(*ratio_range)
    return resize_keep_ratio(image, label, [s * ratio for s in base_size])


def _crop_box(rng, height, width, crop_h, crop_w):
    top = int(rng.integers(0, max(height - crop_h, 0) + 1))
    left = int(rng.integers(0, max(width - crop_w, 0) + 1))
    return top, left, top + crop_h, left + crop_w


def random_crop(
    image,
    label,
    rng: np.random.Generator,
    crop_size: Sequence[int],
    *,
    cat_max_ratio: float = 0.75,
    ignore_label: int = IGNORE_LABEL,
    max_tries: int = 10,
):
    """mmseg RandomCrop: a crop of at most `crop_size` = (h, w) (smaller images stay whole).

    With cat_max_ratio < 1, up to `max_tries` boxes are drawn until one whose most frequent
    non-ignored class covers less than cat_max_ratio of its labelled pixels (and that has at
    least two classes); the last box drawn is used otherwise.
    """
    crop_h, crop_w = crop_size
    box = _crop_box(rng, *label.shape, crop_h, crop_w)
    if cat_max_ratio < 1.0:
        for _ in range(max_tries):
            top, left, bottom, right = box
            counts = np.bincount(label[top:bottom, left:right].ravel(), minlength=256)
            counts = np.delete(counts, ignore_label)
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = _crop_box(rng, *label.shape, crop_h, crop_w)
    top, left, bottom, right = box
    return image[top:bottom, left:right], label[top:bottom, left:right]


def random_flip(image, label, rng: np.random.Generator, prob: float = 0.5):
    """Horizontal flip of image (and label) with probability `prob`."""
    if rng.random() < prob:
        image = image[:, ::-1]
        label = None if label is None else label[:, ::-1]
    return image, label


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """float RGB in [0, 255] `[..., 3]` → HSV: hue in [0, 1), saturation in [0, 1], V as input."""
    value = rgb.max(-1)
    delta = value - rgb.min(-1)
    saturation = np.where(value > 0, delta / np.maximum(value, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    red, green, blue = np.moveaxis(rgb, -1, 0)
    hue = np.where(
        value == red,
        (green - blue) / safe,
        np.where(value == green, 2.0 + (blue - red) / safe, 4.0 + (red - green) / safe),
    )
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = np.moveaxis(hsv, -1, 0)
    # Standard piecewise-linear formula: channel n is V - V*S*clip(min(k, 4-k), 0, 1).
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (offset + hue * 6.0) % 6.0
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(channels, axis=-1)


def _affine(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(image * alpha + beta, 0.0, 255.0)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness_delta: float = 32,
    contrast_range=(0.5, 1.5),
    saturation_range=(0.5, 1.5),
    hue_delta: float = 18,
) -> np.ndarray:
    """mmseg PhotoMetricDistortion on uint8 RGB `[H, W, 3]`; each step applied with p 0.5.

    brightness (+U(-32, 32)) → contrast (xU(0.5, 1.5)) first or last (p 0.5) → saturation
    (xU(0.5, 1.5)) → hue (+randint(-18, 18) on OpenCV's 180-step hue circle). Clipped to [0, 255]
    after every step and rounded down to uint8 at the end.
    """
    image = image.astype(np.float32)
    if rng.integers(2):
        image = _affine(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        image = _affine(image, alpha=rng.uniform(*contrast_range))
    hsv = rgb_to_hsv(image)
    if rng.integers(2):
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*saturation_range), 0.0, 1.0)
    if rng.integers(2):
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-hue_delta, hue_delta + 1) / 180.0) % 1.0
    image = _affine(hsv_to_rgb(hsv))
    if not contrast_first and rng.integers(2):
        image = _affine(image, alpha=rng.uniform(*contrast_range))
    return image.astype(np.uint8)


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(image - mean) / std per RGB channel, float32."""
    return (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_to(
    image: np.ndarray,
    label: np.ndarray | None,
    size: Sequence[int],
    *,
    ignore_label: int = IGNORE_LABEL,
):
    """Pads bottom/right to `size` = (h, w): image with 0, label with `ignore_label`."""
    pad_h, pad_w = size[0] - image.shape[0], size[1] - image.shape[1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(
            f"pad_to: image {image.shape[:2]} is larger than the target {tuple(size)}."
        )
    image = np.pad(image, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (image.ndim - 2))
    if label is not None:
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_label)
    return image, label


def segmentation_train_augment(
    example: dict[str, Any],
    rng: np.random.Generator,
    *,
    crop_size: Sequence[int],
    base_size: Sequence[int],
    ratio_range=(0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> dict[str, np.ndarray]:
    """{'image': uint8 [H,W,3], 'label': uint8 [H,W]} → {'image': f32 [h,w,3], 'label': u8 [h,w]}.

    (h, w) = crop_size. The mmseg training pipeline (module docstring) for one example.
    """
    image, label = random_resize(
        example["image"], example["label"], rng, base_size=base_size, ratio_range=ratio_range
    )
    image, label = random_crop(image, label, rng, crop_size, cat_max_ratio=cat_max_ratio)
    image, label = random_flip(image, label, rng, flip_prob)
    if photometric:
        image = photometric_distortion(np.ascontiguousarray(image), rng)
    image, label = pad_to(normalize(image, mean, std), label, crop_size)
    return {"image": image, "label": np.ascontiguousarray(label)}


def segmentation_eval_preprocess(
    example: dict[str, Any],
    *,
    base_size: Sequence[int] | None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> dict[str, np.ndarray]:
    """Image resized to `base_size` (aspect kept; None keeps it) and normalised; label untouched.

    Metrics are computed at the label's original resolution, so evaluation resizes logits back.
    """
    image = example["image"]
    if base_size is not None:
        image, _ = resize_keep_ratio(image, None, base_size)
    return {**example, "image": normalize(image, mean, std)}


class SegmentationTrainTransform(grain.transforms.RandomMap):
    """grain RandomMap wrapper of `segmentation_train_augment` (kwargs as there)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def random_map(self, element, rng: np.random.Generator):
        return segmentation_train_augment(element, rng, **self.kwargs)


# ----------------------------------------------------------------------------------------------
# Video: T frames with a stride, short side rescaled, spatial crop and flip (the original NL
# recipe: short side U[256, 320], 224 crop, 32 frames with stride 2; test 10 clips x 3 crops).
# ----------------------------------------------------------------------------------------------


def clip_indices(num_frames: int, start: int, clip_len: int, stride: int) -> np.ndarray:
    """Frame indices start, start+stride, ... (clip_len of them), looping past the end."""
    return (start + stride * np.arange(clip_len)) % num_frames


def random_clip_indices(
    num_frames: int, rng: np.random.Generator, *, clip_len: int, stride: int
) -> np.ndarray:
    """A clip whose start is uniform over the positions where it fits (0 if none does)."""
    span = (clip_len - 1) * stride + 1
    return clip_indices(
        num_frames, int(rng.integers(0, max(num_frames - span, 0) + 1)), clip_len, stride
    )


def uniform_clip_indices(
    num_frames: int, *, num_clips: int, clip_len: int, stride: int
) -> np.ndarray:
    """`num_clips` clips with evenly spaced starts: int `[num_clips, clip_len]` (multi-view);
    a single clip is the middle one."""
    span = (clip_len - 1) * stride + 1
    last = max(num_frames - span, 0)
    starts = np.linspace(0, last, num_clips) if num_clips > 1 else np.array([last / 2])
    starts = starts.round().astype(int)
    return np.stack([clip_indices(num_frames, s, clip_len, stride) for s in starts])


def _resize_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    size = rescale_size(*frames.shape[1:3], (short_side, 100 * short_side))
    return np.stack([resize(frame, None, size)[0] for frame in frames])


def video_train_augment(
    example: dict[str, Any],
    rng: np.random.Generator,
    *,
    clip_len: int,
    stride: int,
    crop_size: int,
    short_side_range=(256, 320),
    flip_prob: float = 0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> dict[str, np.ndarray]:
    """{'video': uint8 [N,H,W,3], 'label'} → {'video': f32 [T,c,c,3], 'label'} (T = clip_len)."""
    video = example["video"]
    frames = video[random_clip_indices(len(video), rng, clip_len=clip_len, stride=stride)]
    frames = _resize_frames(frames, int(rng.integers(short_side_range[0], short_side_range[1] + 1)))
    top, left, bottom, right = _crop_box(rng, *frames.shape[1:3], crop_size, crop_size)
    frames = frames[:, top:bottom, left:right]
    if rng.random() < flip_prob:
        frames = frames[:, :, ::-1]
    return {"video": normalize(frames, mean, std), "label": example["label"]}


def video_eval_views(
    example: dict[str, Any],
    *,
    clip_len: int,
    stride: int,
    crop_size: int,
    num_clips: int = 10,
    num_crops: int = 3,
    short_side: int | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> dict[str, np.ndarray]:
    """Multi-view test input: {'video': f32 [num_clips*num_crops, T, c, c, 3], 'label'}.

    Clips evenly spaced in time; crops evenly spaced along the longer side (short side resized to
    `short_side`, default crop_size, so each crop covers the full short side).
    """
    video = example["video"]
    views = []
    for indices in uniform_clip_indices(
        len(video), num_clips=num_clips, clip_len=clip_len, stride=stride
    ):
        # Only the clip's frames are resized (a single eval view uses a few of ~300 frames).
        clip = _resize_frames(video[indices], short_side or crop_size)
        height, width = clip.shape[1:3]
        for offset in np.linspace(0.0, 1.0, num_crops) if num_crops > 1 else [0.5]:
            slide_vertically = height > width
            top = round((height - crop_size) * (offset if slide_vertically else 0.5))
            left = round((width - crop_size) * (0.5 if slide_vertically else offset))
            views.append(clip[:, top : top + crop_size, left : left + crop_size])
    return {"video": normalize(np.stack(views), mean, std), "label": example["label"]}


class VideoTrainTransform(grain.transforms.RandomMap):
    """grain RandomMap wrapper of `video_train_augment` (kwargs as there)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def random_map(self, element, rng: np.random.Generator):
        return video_train_augment(element, rng, **self.kwargs)
