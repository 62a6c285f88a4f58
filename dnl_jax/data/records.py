"""What the raw-file parsers share: image checks, label mapping and the prepared records.

A parser (cityscapes.py, ade20k.py, pascal_context.py, video.py) yields records, flat dicts of a
'name' and encoded images (PNG/JPEG bytes, so a prepared Cityscapes is about the size of the zips)
that the tfds builders (`builders.py`) write as they are; readers decode on access (`sources.py`).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dnl_jax import IGNORE_LABEL  # noqa: E402  (one definition, re-exported here)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 `[H, W]` or `[H, W, 3]` → PNG bytes (lossless, so labels survive)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    """uint8 `[H, W, 3]` → JPEG bytes (video frames; lossy like the source videos)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


def decode_image(data: bytes, *, mode: str, what: str) -> tuple[np.ndarray, str]:
    """PNG/JPEG bytes → (uint8 array in PIL `mode`, the file's own PIL mode).

    mode 'RGB' gives `[H, W, 3]` whatever the file holds (grey, palette, CMYK); mode 'L' gives
    the single-channel `[H, W]` of a label image and refuses a colour one.
    Raises ValueError naming `what` (a path) when the bytes are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            source_mode = image.mode
            if mode == "RGB":
                image = image.convert("RGB")
            elif image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(
                    f"{what}: label image has mode {image.mode!r}; expected a "
                    "single-channel PNG (mode L, P, I or I;16)."
                )
            return np.asarray(image), source_mode
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"{what}: corrupt or unreadable image ({error}); re-extract this file "
            "from the original download."
        ) from error


def map_labels(
    raw: np.ndarray, lookup: np.ndarray, *, num_valid_raw: int
) -> tuple[np.ndarray, int]:
    """Maps raw label values through `lookup` (a uint8 table over raw values).

    Args:
      raw: integer `[H, W]` raw annotation values.
      lookup: uint8 `[num_valid_raw]`; lookup[v] is the train id of raw value v (255 = ignore).
      num_valid_raw: raw values >= this are outside the annotation format's range.

    Returns:
      (uint8 `[H, W]` train ids, number of pixels whose raw value was outside the range; those
      pixels become IGNORE_LABEL).
    """
    raw = np.asarray(raw).astype(np.int64)
    outside = (raw < 0) | (raw >= num_valid_raw)
    mapped = lookup[np.clip(raw, 0, num_valid_raw - 1)]
    mapped[outside] = IGNORE_LABEL
    return mapped.astype(np.uint8), int(outside.sum())


def require_file(path: str, what: str) -> str:
    """Returns `path` if it is a file, else a ValueError naming the expected path."""
    if not os.path.isfile(path):
        raise ValueError(
            f"missing {what}: expected it at {path}. Download it and place it "
            "there (the dataset module's docstring in dnl_jax/data/ shows the "
            "expected layout)."
        )
    return path


class OutOfRangeCounter:
    """Counts, per split, pixels whose raw label was outside the format's range (→ ignore)."""

    def __init__(self):
        self.pixels: dict[str, int] = {}
        self.images: dict[str, list[str]] = {}

    def add(self, split: str, name: str, count: int) -> None:
        self.pixels[split] = self.pixels.get(split, 0) + count
        if count:
            self.images.setdefault(split, []).append(name)

    def split_stats(self, split: str) -> dict[str, Any]:
        """Joins the split's metadata; also printed by `prepare` so the user sees it."""
        names = self.images.get(split, [])
        return {
            "out_of_range_pixels": self.pixels.get(split, 0),
            "out_of_range_images": len(names),
            "out_of_range_examples": names[:20],
        }


def segmentation_example(
    name: str,
    image_bytes: bytes,
    label: bytes | np.ndarray,
    *,
    lookup: np.ndarray,
    num_valid_raw: int,
    image_what: str,
    label_what: str,
) -> tuple[dict[str, Any], int]:
    """One prepared segmentation record from the raw encoded image and annotation.

    The image bytes are kept as they are when they decode to 8-bit RGB; any other image (grey,
    palette, CMYK: ADE20K has a few) is stored as its RGB conversion in PNG, so every reader
    gets `[H, W, 3]`. The annotation (encoded bytes, or an already decoded integer `[H, W]`
    array) is mapped to train ids (`map_labels`) and stored as a PNG.
    Returns (record, out-of-range pixel count).
    Raises ValueError for a corrupt file or image/annotation sizes that differ.
    """
    image, source_mode = decode_image(image_bytes, mode="RGB", what=image_what)
    if source_mode != "RGB":
        image_bytes = encode_png(image)
    raw_label = (
        np.asarray(label)
        if isinstance(label, np.ndarray)
        else decode_image(label, mode="L", what=label_what)[0]
    )
    if raw_label.shape != image.shape[:2]:
        raise ValueError(
            f"{label_what}: annotation is {raw_label.shape[0]}x{raw_label.shape[1]} "
            f"but its image {image_what} is {image.shape[0]}x{image.shape[1]}; "
            "they must match pixel for pixel."
        )
    label, outside = map_labels(raw_label, lookup, num_valid_raw=num_valid_raw)
    return {"name": name, "image": image_bytes, "label": encode_png(label)}, outside
