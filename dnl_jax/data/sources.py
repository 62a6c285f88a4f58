"""Random-access sources over prepared datasets (grain `RandomAccessDataSource` protocol).

`load_split(name, split, data_dir)` → a source with `len()` and `source[i]`:
  segmentation: {'image': uint8 [H, W, 3], 'label': uint8 [H, W]} (train ids, 255 = ignore)
  detection:    COCO (`coco.decode_record`): {'image': uint8 [H, W, 3], 'image_id', 'height',
                 'width', 'boxes': f32 [n, 4] (x1, y1, x2, y2), 'labels': int32 [n] (0..K-1),
                 'category_ids', 'iscrowd': bool [n], 'areas', 'masks': uint8 [n, H, W]}
  video:        {'video': `video.EncodedFrames` (acts as uint8 [T, H, W, 3]; indexing decodes
                 only the frames asked for), 'label': int32 scalar}
plus 'name' (the raw file's id) when `with_names=True`, for writing predictions.

The data are the array_record files that the tfds builders (`builders.py`) wrote under
`data_dir/NAME/VERSION`; tfds reads them as a random-access data source
(`builder.as_data_source`), decoding on access without TensorFlow. So grain's
`MapDataset.source(...)` can shuffle, shard per host (`dataset[process_index::process_count]`)
and checkpoint its position by index.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dnl_jax.data import coco, video

VERSION = "1.0.0"  # of every dataset the tfds builders in builders.py write


def builder_dir(data_dir: str, name: str) -> str:
    """Where the tfds builder of dataset `name` writes it under `data_dir` (and we read it)."""
    return os.path.join(data_dir, name, VERSION)


class DamagedRecord(ValueError):
    """A prepared record that does not read: the message names the file, the split, the record
    and how to prepare the dataset again."""


class PreparedSource:
    """One split of a prepared dataset; picklable (grain workers re-open the files)."""

    def __init__(self, data_dir: str, name: str, split: str, *, with_names: bool = False):
        self._builder_dir = builder_dir(data_dir, name)
        info = _open_builder(self._builder_dir, name, data_dir).info
        if split not in info.splits:
            raise ValueError(
                f"dataset {name!r} under {data_dir} has no split {split!r}; "
                f"it has {sorted(info.splits.keys())}."
            )
        self._length = int(info.splits[split].num_examples)
        if self._length == 0:
            raise ValueError(f"split {split!r} of {name!r} is empty; prepare it again.")
        self.name, self.split, self.with_names = name, split, with_names
        self.metadata: dict[str, Any] = dict(info.metadata)
        self.classes: list[str] = list(self.metadata["classes"])
        self.is_video = self.metadata["task"] == "video"
        self.is_detection = self.metadata["task"] == "detection"
        self._files = [str(f) for f in info.splits[split].filenames]
        self._shard_lengths = [int(n) for n in info.splits[split].shard_lengths]
        self._source = self._decode_frame = None  # opened lazily, per process

    def _records(self):
        if self._source is None:
            builder = _open_builder(self._builder_dir, self.name)
            # Video frames stay JPEG bytes until a transform picks a clip's frames.
            decoders = {"video": _keep_encoded()} if self.is_video else None
            self._source = builder.as_data_source(self.split, decoders=decoders)
            if self.is_video:
                self._decode_frame = builder.info.features["video"].feature.decode_example_np
        return self._source

    def raw_records(self, skip_decoding: tuple[str, ...] = ()):
        """The split's records as tfds decodes them (a random-access sequence of dicts), with
        the image features named in `skip_decoding` left encoded (bytes): e.g. COCO's ground
        truth reads the annotations without decoding a single image."""
        import tensorflow_datasets as tfds

        decoders = {name: tfds.decode.SkipDecoding() for name in skip_decoding}
        return _open_builder(self._builder_dir, self.name).as_data_source(
            self.split, decoders=decoders or None
        )

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples.")
        try:
            record = self._records()[index]
        except Exception as error:  # noqa: BLE001 - riegeli/array_record/tfds raise many types
            raise DamagedRecord(self._damage_message(index, error)) from error
        if self.is_video:
            example = {
                "video": video.EncodedFrames(record["video"], self._decode_frame),
                "label": np.int32(record["label"]),
            }
        elif self.is_detection:
            example = coco.decode_record(record)
        else:
            example = {"image": record["image"], "label": record["label"][..., 0]}
        if self.with_names:
            example["name"] = record["name"].decode()
        return example

    def shard_of(self, index: int) -> tuple[str, int]:
        """(file name, index within it) of record `index` of the split."""
        first = 0
        for name, length in zip(self._files, self._shard_lengths, strict=False):
            if index < first + length:
                return name, index - first
            first += length
        return "?", index

    def _damage_message(self, index: int, error: BaseException) -> str:
        name, within = self.shard_of(index)
        data_dir = os.path.dirname(os.path.dirname(self._builder_dir))
        first = (str(error).strip().splitlines() or [""])[0][:200]
        return (
            f"damaged prepared data: record {index} of split {self.split!r} of "
            f"{self.name!r} (record {within} of {os.path.join(self._builder_dir, name)}) "
            f"does not read ({type(error).__name__}: {first}). Prepare the dataset again: "
            f"delete {self._builder_dir} and run python -m dnl_jax.cli.prepare {self.name} "
            f"--manual_dir RAW --data_dir {data_dir}"
        )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = state["_decode_frame"] = None
        return state

    def __repr__(self) -> str:
        return f"PreparedSource({self.name}/{self.split}, n={len(self)})"


class Subset:
    """The examples `indices` of a random-access source, as a random-access source (e.g. COCO's
    mmdet training set, `coco.train_indices`); picklable when the source is."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples.")
        return self.source[int(self.indices[index])]

    def __getattr__(self, name: str):  # metadata, classes, split... of the source
        if name in ("source", "indices"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, n={len(self)})"


def _keep_encoded():
    """A tfds decoder that hands a sequence feature's serialized items (JPEG bytes) through."""
    import tensorflow_datasets as tfds

    class KeepEncoded(tfds.decode.SkipDecoding):
        def decode_batch_example_np(self, serialized):
            return serialized

    return KeepEncoded()


def _open_builder(builder_dir: str, name: str, data_dir: str | None = None):
    """The tfds read-only builder of `builder_dir`; a ValueError saying how to prepare it if
    there is none."""
    try:
        import tensorflow_datasets as tfds  # reading imports no TensorFlow
    except ImportError as error:
        raise ImportError(
            "reading a prepared dataset needs tensorflow-datasets: pip install -e '.[data]'"
        ) from error
    if not os.path.isfile(os.path.join(builder_dir, "dataset_info.json")):
        data_dir = data_dir or os.path.dirname(os.path.dirname(builder_dir))
        raise ValueError(
            f"{builder_dir} holds no prepared dataset: {name!r} is not prepared "
            f"under {data_dir}. Run: python -m dnl_jax.cli.prepare {name} "
            f"--manual_dir RAW --data_dir {data_dir}"
        )
    return tfds.builder_from_directory(builder_dir)


def load_split(name: str, split: str, data_dir: str, *, with_names: bool = False) -> PreparedSource:
    """The prepared split `split` of dataset `name` under `data_dir` (see the module docstring).

    Raises ValueError when the dataset is not prepared (with the command that prepares it), the
    split does not exist, or it is empty.
    """
    return PreparedSource(data_dir, name, split, with_names=with_names)
