"""Prepared datasets on disk: array_record shards of msgpack-encoded examples, written atomically.

Layout of a prepared dataset `NAME` under `data_dir`:

    data_dir/NAME/meta.json                       {'name', 'classes', 'splits': {split: {...}}}
    data_dir/NAME/SPLIT.array_record-00000-of-0000S   one record per example

A record is `flax.serialization.msgpack_serialize` of a flat dict of bytes / ints / strings
(images stay PNG/JPEG-encoded, so a prepared Cityscapes is about the size of the zips). Readers
decode on access (`sources.py`), so grain can shard, shuffle and resume by index.

Everything is first written to `data_dir/.NAME.incomplete-<random>` and renamed to `data_dir/NAME`
only when every split is complete: a crash or a bad input never leaves a directory that looks
prepared. `meta.json` is the completeness marker that readers check.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import serialization
from PIL import Image, UnidentifiedImageError

IGNORE_LABEL = 255
META_FILE = "meta.json"


def shard_paths(dataset_dir: str, split: str, num_shards: int) -> list[str]:
    """`dataset_dir/SPLIT.array_record-0000i-of-0000S` for i < S."""
    return [os.path.join(dataset_dir, f"{split}.array_record-{i:05d}-of-{num_shards:05d}")
            for i in range(num_shards)]


def encode_png(array: np.ndarray) -> bytes:
    """uint8 `[H, W]` or `[H, W, 3]` → PNG bytes (lossless, so labels survive)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    """uint8 `[H, W, 3]` → JPEG bytes (video frames; lossy like the source videos)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_image(data: bytes, *, mode: str, what: str) -> np.ndarray:
    """PNG/JPEG bytes → uint8 array in PIL `mode` ('RGB' → [H,W,3], 'L'/'P' → [H,W]).

    Raises ValueError naming `what` (a path) when the bytes are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if mode == "RGB":
                image = image.convert("RGB")
            elif image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{what}: label image has mode {image.mode!r}; expected a "
                                 "single-channel PNG (mode L, P, I or I;16).")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{what}: corrupt or unreadable image ({error}); re-extract this file "
                         "from the original download.") from error


def map_labels(raw: np.ndarray, lookup: np.ndarray, *,
               num_valid_raw: int) -> tuple[np.ndarray, int]:
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


def serialize(example: Mapping[str, Any]) -> bytes:
    return serialization.msgpack_serialize(dict(example))


def deserialize(record: bytes) -> dict[str, Any]:
    return serialization.msgpack_restore(record)


def _write_split(dataset_dir: str, split: str, examples: Iterable[Mapping[str, Any]],
                 num_shards: int, on_example: Callable[[Mapping], None]) -> int:
    """Writes `examples` round-robin into `num_shards` shards; returns how many were written."""
    from array_record.python.array_record_module import ArrayRecordWriter

    # group_size:1 makes every record individually addressable (fast random access).
    writers = [ArrayRecordWriter(path, "group_size:1")
               for path in shard_paths(dataset_dir, split, num_shards)]
    count = 0
    try:
        for example in examples:
            on_example(example)
            writers[count % num_shards].write(serialize(example))
            count += 1
    finally:
        for writer in writers:
            writer.close()
    return count


def write_dataset(data_dir: str, name: str, splits: Mapping[str, Callable[[], Iterable[dict]]],
                  *, meta: Mapping[str, Any], num_shards: int = 1, overwrite: bool = False,
                  stats_fn: Callable[[str, Mapping], None] | None = None,
                  split_stats: Callable[[str], Mapping] | None = None) -> str:
    """Writes every split of dataset `name` under `data_dir/name`, atomically.

    Args:
      splits: split name → a zero-argument callable yielding serialisable example dicts.
      meta: JSON-able facts stored in meta.json (classes, label mapping notes, ...).
      stats_fn: called with (split, example) for each example before it is written.
      split_stats: called with a split name after it is written; its dict joins that split's meta.

    Returns the final directory. Raises ValueError if it exists and `overwrite` is False, or if a
    split has no examples; in every error case the partial output is deleted.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1.")
    final_dir = os.path.join(data_dir, name)
    if os.path.exists(final_dir) and not overwrite:
        raise ValueError(f"{final_dir} already exists; pass --overwrite to replace it.")
    os.makedirs(data_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix=f".{name}.incomplete-", dir=data_dir)
    try:
        split_meta = {}
        for split, make_examples in splits.items():
            count = _write_split(work_dir, split, make_examples(), num_shards,
                                 lambda ex, s=split: stats_fn and stats_fn(s, ex))
            if count == 0:
                raise ValueError(f"split {split!r} of {name!r} has no examples; check that the raw "
                                 "files are where the dataset's layout expects them.")
            split_meta[split] = {"num_examples": count, "num_shards": num_shards,
                                 **(split_stats(split) if split_stats else {})}
        with open(os.path.join(work_dir, META_FILE), "w") as f:
            json.dump({"name": name, **meta, "splits": split_meta}, f, indent=1)
        if os.path.exists(final_dir):
            shutil.rmtree(final_dir)
        os.rename(work_dir, final_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return final_dir


def read_meta(data_dir: str, name: str) -> dict[str, Any]:
    """The meta.json of a prepared dataset; ValueError saying how to prepare it if absent."""
    path = os.path.join(data_dir, name, META_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: dataset {name!r} is not prepared under {data_dir}. "
                         f"Run: python -m dnl_jax.data.prepare {name} --manual_dir RAW "
                         f"--data_dir {data_dir}")
    with open(path) as f:
        return json.load(f)


def require_file(path: str, what: str) -> str:
    """Returns `path` if it is a file, else a ValueError naming the expected path."""
    if not os.path.isfile(path):
        raise ValueError(f"missing {what}: expected it at {path}. Download it and place it "
                         "there (see dnl_jax/data/prepare.py for the expected layout).")
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
        """Joins meta.json; also printed by `prepare` so the user sees it."""
        names = self.images.get(split, [])
        return {"out_of_range_pixels": self.pixels.get(split, 0),
                "out_of_range_images": len(names), "out_of_range_examples": names[:20]}


def segmentation_example(name: str, image_bytes: bytes, label: bytes | np.ndarray, *,
                         lookup: np.ndarray, num_valid_raw: int, image_what: str,
                         label_what: str) -> tuple[dict[str, Any], int]:
    """One prepared segmentation record from the raw encoded image and annotation.

    The image bytes are kept as they are (after checking they decode); the annotation (encoded
    bytes, or an already decoded integer `[H, W]` array) is mapped to train ids (`map_labels`)
    and stored as a PNG. Returns (record, out-of-range pixel count).
    Raises ValueError for a corrupt file or image/annotation sizes that differ.
    """
    image = decode_image(image_bytes, mode="RGB", what=image_what)
    raw_label = (np.asarray(label) if isinstance(label, np.ndarray)
                 else decode_image(label, mode="L", what=label_what))
    if raw_label.shape != image.shape[:2]:
        raise ValueError(f"{label_what}: annotation is {raw_label.shape[0]}x{raw_label.shape[1]} "
                         f"but its image {image_what} is {image.shape[0]}x{image.shape[1]}; "
                         "they must match pixel for pixel.")
    label, outside = map_labels(raw_label, lookup, num_valid_raw=num_valid_raw)
    return {"name": name, "image": image_bytes, "label": encode_png(label)}, outside
