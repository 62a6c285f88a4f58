"""Action-recognition videos (Kinetics layout, or UCF101) → records of JPEG frames + class index.

Raw input (`manual_dir`), either
  class folders:  {train,val}/CLASS_NAME/VIDEO.{mp4,avi,webm,mkv}
  or CSV lists:   {train,val}.csv with a header containing `label` and either
                  `path` (relative to manual_dir) or the Kinetics columns
                  `youtube_id,time_start,time_end`, the video then being
                  SPLIT/YOUTUBEID_%06d(start)_%06d(end).mp4 (or under SPLIT/LABEL/).

Frames are decoded with FFmpeg (PyAV, preparation time only), resized so the short side is
`short_side` and stored JPEG-encoded, at most `max_frames` per video (evenly subsampled beyond
that). Kinetics class indices follow the sorted class names of the train split; UCF101's
follow its classInd.txt (see `ucf101_listing`; why not tfds's own ucf101: builders.py).
"""

from __future__ import annotations

import csv
import functools
import io
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence

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
        raise ValueError(
            f"{path}: cannot decode video ({error}); re-download this file."
        ) from error
    if not frames:
        raise ValueError(f"{path}: video has no frames; re-download this file.")
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return frames


class EncodedFrames:
    """A stored video's JPEG frames, decoded when indexed: `frames[indices]` decodes only those.

    Stands in for the uint8 `[T, H, W, 3]` array where the transforms read it (`len`, `.shape`,
    `.dtype`, an int, a slice or a 1-D index array), so a clip of 32 frames decodes 32 JPEGs,
    not the ~300 a Kinetics video stores. `np.asarray(frames)` decodes all of them.

    Args:
      encoded: the frames' JPEG bytes, in order.
      decode: bytes → uint8 `[H, W, 3]` (the dataset feature's own decoder, so the pixels are
        the same as a full decode's).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, encoded: Sequence[bytes], decode: Callable[[bytes], np.ndarray]):
        if len(encoded) == 0:
            raise ValueError("a stored video has no frames; prepare the dataset again.")
        self._encoded, self._decode, self._frame_shape = list(encoded), decode, None

    def __len__(self) -> int:
        return len(self._encoded)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """`(T, H, W, 3)`, read from the first frame's JPEG header (no decoding)."""
        if self._frame_shape is None:
            with Image.open(io.BytesIO(self._encoded[0])) as image:
                self._frame_shape = (image.height, image.width, 3)
        return (len(self), *self._frame_shape)

    def __getitem__(self, index) -> np.ndarray:
        """uint8 `[H, W, 3]` for an int; `[k, H, W, 3]` for a slice or 1-D int index array
        (each distinct frame decoded once)."""
        if isinstance(index, (int, np.integer)):
            return self._decode(self._encoded[index])
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        positions = np.asarray(index)
        if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
            raise TypeError(
                f"EncodedFrames takes an int, a slice or a 1-D int array of frame "
                f"indices; got {index!r}. Use np.asarray(frames) for other indexing."
            )
        decoded = {int(i): self._decode(self._encoded[i]) for i in np.unique(positions)}
        return np.stack([decoded[int(i)] for i in positions])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[np.arange(len(self))]
        return frames if dtype is None else frames.astype(dtype)

    def __repr__(self) -> str:
        return f"EncodedFrames({len(self)} JPEG frames)"


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
            entries += [
                (os.path.join(class_dir, f), class_name)
                for f in sorted(os.listdir(class_dir))
                if f.lower().endswith(VIDEO_EXTENSIONS)
            ]
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
                    start, end = int(row["time_start"]), int(row["time_end"])
                    stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
                except (KeyError, ValueError) as error:
                    raise ValueError(
                        f"{csv_path}: row {row} needs 'path' or youtube_id, time_start, time_end."
                    ) from error
                flat = os.path.join(manual_dir, split, stem + ".mp4")
                nested = os.path.join(manual_dir, split, row["label"], stem + ".mp4")
                path = nested if os.path.isfile(nested) else flat
            path = records.require_file(path, f"video listed in {csv_path}")
            entries.append((path, row["label"]))
    return entries


def list_split(manual_dir: str, split: str) -> list[tuple[str, str]]:
    """(video path, class name) of `split`, from SPLIT.csv if present, else class folders."""
    csv_path = os.path.join(manual_dir, f"{split}.csv")
    if os.path.isfile(csv_path):
        return _csv_entries(manual_dir, split, csv_path)
    split_dir = os.path.join(manual_dir, split)
    if not os.path.isdir(split_dir):
        raise ValueError(
            f"missing video split {split!r}: expected {csv_path} or class folders "
            f"under {split_dir}."
        )
    return _folder_entries(split_dir)


def _record(entry: tuple[str, int], *, manual_dir: str, short_side: int, max_frames: int) -> dict:
    """One prepared record: {'name': path relative to manual_dir, 'label', 'video': [JPEG]}."""
    path, label = entry
    frames = decode_video(path, short_side=short_side, max_frames=max_frames)
    return {
        "name": os.path.relpath(path, manual_dir),
        "label": label,
        "video": [records.encode_jpeg(frame) for frame in frames],
    }


def kinetics_listing(
    manual_dir: str, splits: tuple[str, ...] = SPLITS
) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """({split: [(video path, class name)]}, class names sorted) in the Kinetics layout.

    Classes of later splits must all occur in the first (ValueError otherwise)."""
    listed = {split: list_split(manual_dir, split) for split in splits}
    classes = sorted({name for _, name in listed[splits[0]]})
    for split, entries in listed.items():
        unknown = sorted({name for _, name in entries} - set(classes))
        if unknown:
            raise ValueError(
                f"split {split!r} has classes {unknown[:5]} absent from "
                f"{splits[0]!r}; every class needs training videos."
            )
    return listed, classes


def ucf101_listing(
    manual_dir: str, fold: int = 1
) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """UCF101 (our builder in place of tfds'): UCF-101/CLASS/v_CLASS_gXX_cYY.avi videos and the
    official ucfTrainTestlist/{classInd,trainlist0F,testlist0F}.txt; splits 'train' and 'test'.
    Class index = classInd's number - 1 (as tfds)."""
    lists = os.path.join(manual_dir, "ucfTrainTestlist")
    class_file = records.require_file(os.path.join(lists, "classInd.txt"), "UCF101 class list")
    with open(class_file) as f:
        numbered = sorted(
            (int(number), name) for number, name in (line.split() for line in f if line.strip())
        )
    classes = [name for _, name in numbered]
    listed = {}
    for split, list_name in (("train", f"trainlist0{fold}.txt"), ("test", f"testlist0{fold}.txt")):
        list_file = records.require_file(os.path.join(lists, list_name), "UCF101 split list")
        with open(list_file) as f:
            relative = [line.split()[0] for line in f if line.strip()]
        listed[split] = [
            (
                records.require_file(
                    os.path.join(manual_dir, "UCF-101", r), f"video listed in {list_file}"
                ),
                r.split("/")[0],
            )
            for r in relative
        ]
    return listed, classes


def build_splits(
    manual_dir: str,
    listed: dict[str, list[tuple[str, str]]],
    classes: list[str],
    *,
    short_side: int = 256,
    max_frames: int = 300,
    num_workers: int = 1,
) -> dict[str, Callable[[], Iterator[dict]]]:
    """split → generator of records for the `listed` videos (see *_listing).

    With num_workers > 1, videos are decoded in that many processes (order is kept)."""
    index = {name: i for i, name in enumerate(classes)}
    make_record = functools.partial(
        _record, manual_dir=manual_dir, short_side=short_side, max_frames=max_frames
    )

    def examples(split: str) -> Iterator[dict]:
        entries = [(path, index[name]) for path, name in listed[split]]
        if num_workers <= 1:
            yield from map(make_record, entries)
            return
        # spawn: forking a process that has initialised JAX/XLA threads is unsafe.
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            yield from pool.imap(make_record, entries)

    return {split: (lambda split=split: examples(split)) for split in listed}
