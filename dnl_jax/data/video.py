"""Action-recognition videos in the Kinetics layout → records of JPEG frames + class index.

Raw input (`manual_dir`), either
  class folders:  {train,val}/CLASS_NAME/VIDEO.{mp4,avi,webm,mkv}
  or CSV lists:   {train,val}.csv with a header containing `label` and either
                  `path` (relative to manual_dir) or the Kinetics columns
                  `youtube_id,time_start,time_end`, the video then being
                  SPLIT/YOUTUBEID_%06d(start)_%06d(end).mp4 (or under SPLIT/LABEL/).

Frames are decoded with FFmpeg (PyAV, preparation time only), resized so the short side is
`short_side` and stored JPEG-encoded, at most `max_frames` per video (evenly subsampled beyond
that). Class indices follow the sorted class names of the train split.
"""

from __future__ import annotations

import csv
import functools
import multiprocessing
import os
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from dnl_jax.data import records

SPLITS = ("train", "val")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv")


def decode_video(path: str, *, short_side: int, max_frames: int) -> list[np.ndarray]:
    """All frames of `path` as uint8 `[H', W', 3]` with min(H', W') = short_side.

    Raises ValueError naming the file when FFmpeg cannot read it or it has no frames.
    """
    import av  # preparation-only dependency (the `data` extra)

    frames = []
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                frames.append(_resize_short_side(frame.to_image(), short_side))
    except (av.FFmpegError, IndexError, OSError) as error:
        raise ValueError(f"{path}: cannot decode video ({error}); re-download this file.") from error
    if not frames:
        raise ValueError(f"{path}: video has no frames; re-download this file.")
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return frames


def _resize_short_side(image: Image.Image, short_side: int) -> np.ndarray:
    width, height = image.size
    scale = short_side / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(image.convert("RGB").resize(size, Image.BILINEAR))


def _folder_entries(split_dir: str) -> list[tuple[str, str]]:
    """(video path, class name) under SPLIT/CLASS/ folders, sorted."""
    entries = []
    for class_name in sorted(os.listdir(split_dir)):
        class_dir = os.path.join(split_dir, class_name)
        if os.path.isdir(class_dir):
            entries += [(os.path.join(class_dir, f), class_name) for f in sorted(os.listdir(class_dir))
                        if f.lower().endswith(VIDEO_EXTENSIONS)]
    return entries


def _csv_entries(manual_dir: str, split: str, csv_path: str) -> list[tuple[str, str]]:
    """(video path, class name) listed in SPLIT.csv; missing videos raise ValueError."""
    entries = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if "label" not in row:
                raise ValueError(f"{csv_path}: needs a 'label' column; has {list(row)}.")
            if row.get("path"):
                path = os.path.join(manual_dir, row["path"])
            else:
                try:
                    stem = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
                except (KeyError, ValueError) as error:
                    raise ValueError(f"{csv_path}: row {row} needs 'path' or youtube_id, "
                                     "time_start, time_end.") from error
                flat = os.path.join(manual_dir, split, stem + ".mp4")
                nested = os.path.join(manual_dir, split, row["label"], stem + ".mp4")
                path = nested if os.path.isfile(nested) else flat
            entries.append((records.require_file(path, f"video listed in {csv_path}"), row["label"]))
    return entries


def list_split(manual_dir: str, split: str) -> list[tuple[str, str]]:
    """(video path, class name) of `split`, from SPLIT.csv if present, else class folders."""
    csv_path = os.path.join(manual_dir, f"{split}.csv")
    if os.path.isfile(csv_path):
        return _csv_entries(manual_dir, split, csv_path)
    split_dir = os.path.join(manual_dir, split)
    if not os.path.isdir(split_dir):
        raise ValueError(f"missing video split {split!r}: expected {csv_path} or class folders "
                         f"under {split_dir}.")
    return _folder_entries(split_dir)


def _record(entry: tuple[str, int], *, manual_dir: str, short_side: int, max_frames: int) -> dict:
    """One prepared record: {'name': path relative to manual_dir, 'label', 'frames': [JPEG]}."""
    path, label = entry
    frames = decode_video(path, short_side=short_side, max_frames=max_frames)
    return {"name": os.path.relpath(path, manual_dir), "label": label,
            "frames": [records.encode_jpeg(frame) for frame in frames]}


def build_splits(manual_dir: str, *, short_side: int = 256, max_frames: int = 300,
                 splits: tuple[str, ...] = SPLITS,
                 num_workers: int = 1) -> tuple[dict[str, Callable], list[str]]:
    """(split → generator of records, class names). Unknown classes in val raise ValueError.

    With num_workers > 1, videos are decoded in that many processes (order is kept)."""
    listed = {split: list_split(manual_dir, split) for split in splits}
    classes = sorted({name for _, name in listed[splits[0]]})
    index = {name: i for i, name in enumerate(classes)}
    for split, entries in listed.items():
        unknown = sorted({name for _, name in entries} - set(index))
        if unknown:
            raise ValueError(f"split {split!r} has classes {unknown[:5]} absent from "
                             f"{splits[0]!r}; every class needs training videos.")

    make_record = functools.partial(_record, manual_dir=manual_dir, short_side=short_side,
                                    max_frames=max_frames)

    def examples(split: str) -> Iterator[dict]:
        entries = [(path, index[name]) for path, name in listed[split]]
        if num_workers <= 1:
            yield from map(make_record, entries)
            return
        # spawn: forking a process that has initialised JAX/XLA threads is unsafe.
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            yield from pool.imap(make_record, entries)

    return {s: (lambda s=s: examples(s)) for s in splits}, classes
