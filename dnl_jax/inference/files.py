"""Reading the user's inputs and writing outputs whole.

Inputs are image files (PNG, JPEG, BMP, ...: whatever Pillow decodes), folders (their images, not
recursive) or glob patterns; grayscale, palette and RGBA images are converted to RGB with a note.
Every output is written to a temporary name in its folder and renamed, so a file on disk is either
complete or absent.
"""

from __future__ import annotations

import glob
import io
import os
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def write_atomic(path: str, data: bytes) -> str:
    """Writes `data` to `path` through a temporary file in the same folder and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def save_atomic(path: str, write: Callable[[io.BytesIO], None]) -> str:
    """`write(buffer)` into memory, then `write_atomic` (for Pillow, matplotlib, numpy)."""
    buffer = io.BytesIO()
    write(buffer)
    return write_atomic(path, buffer.getvalue())


def expand_inputs(inputs: Sequence[str], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[str]:
    """Files of `inputs` (files, folders, globs) in order, without duplicates. ValueError naming
    the first input that matches nothing, or a folder with no images."""
    found: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(tuple(suffixes))
            )
            if not names:
                what = "videos" if tuple(suffixes) == VIDEO_SUFFIXES else "images"
                raise ValueError(
                    f"folder {item} has no {what} ({', '.join(suffixes)}); give {what[:-1]} "
                    "files or another folder."
                )
            found += names
        elif os.path.isfile(item):
            found.append(item)
        else:
            matches = sorted(path for path in glob.glob(item) if os.path.isfile(path))
            if not matches:
                raise ValueError(f"input {item} does not exist (no file, folder or glob match).")
            found += matches
    return list(dict.fromkeys(os.path.abspath(path) for path in found))


def read_image(path: str, notes: list[str] | None = None) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` of image file `path`; other modes are converted (a note goes to
    `notes`). ValueError for an empty or undecodable file."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); give an image file.")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            rgb = image.convert("RGB") if mode != "RGB" else image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"{path} is not a readable image ({type(error).__name__}); give a PNG or JPEG file."
        ) from None
    if mode != "RGB" and notes is not None:
        what = {
            "L": "grayscale",
            "RGBA": "RGBA (alpha dropped)",
            "P": "palette",
            "LA": "grayscale+alpha",
        }
        notes.append(f"note: {os.path.basename(path)} is {what.get(mode, mode)}; converted to RGB.")
    return np.asarray(rgb, np.uint8)


def palette_png(ids: np.ndarray, palette: np.ndarray, label_ids: Sequence[int]) -> Image.Image:
    """Class indices `[H, W]` → a palette ('P') PNG image whose pixel values are the written
    `label_ids` of each class and whose palette draws them in the class colours."""
    lookup = np.asarray(label_ids, np.uint8)
    table = np.zeros((256, 3), np.uint8)
    table[lookup] = np.asarray(palette, np.uint8)
    image = Image.fromarray(lookup[np.asarray(ids)], mode="P")
    image.putpalette(table.reshape(-1).tolist())
    return image


def overlay(image: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5):
    """uint8 `[H, W, 3]`: the class colours blended over the image with weight `alpha`."""
    colours = np.asarray(palette, np.float32)[np.asarray(ids)]
    return np.round((1 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)


def save_png(path: str, image: Image.Image | np.ndarray) -> str:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    return save_atomic(path, lambda buffer: image.save(buffer, format="PNG"))


def output_stem(path: str, used: set[str]) -> str:
    """The output name of input `path`: its file name without suffix, made unique in `used`."""
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, n = stem, 2
    while candidate in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate)
    return candidate


__all__ = [
    "write_atomic",
    "save_atomic",
    "expand_inputs",
    "read_image",
    "palette_png",
    "overlay",
    "save_png",
    "output_stem",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
]
