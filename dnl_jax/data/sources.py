"""Random-access sources over prepared datasets (grain `RandomAccessDataSource` protocol).

`load_split(name, split, data_dir)` → a source with `len()` and `source[i]`:
  segmentation: {'image': uint8 [H, W, 3], 'label': uint8 [H, W]} (train ids, 255 = ignore)
  video:        {'video': uint8 [T, H, W, 3], 'label': int32 scalar}
plus 'name' (the raw file's id) when `with_names=True`, for writing predictions.

Decoding happens on access, so grain's `MapDataset.source(...)` can shuffle, shard per host
(`dataset[process_index::process_count]`) and checkpoint its position by index.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dnl_jax.data import records


class PreparedSource:
    """One split of a prepared dataset; picklable (grain workers re-open the files)."""

    def __init__(self, data_dir: str, name: str, split: str, *, with_names: bool = False):
        meta = records.read_meta(data_dir, name)
        splits = meta["splits"]
        if split not in splits:
            raise ValueError(f"dataset {name!r} under {data_dir} has no split {split!r}; "
                             f"it has {sorted(splits)}.")
        if splits[split]["num_examples"] == 0:
            raise ValueError(f"split {split!r} of {name!r} is empty; prepare it again.")
        self.name, self.split, self.with_names = name, split, with_names
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.is_video = meta.get("task") == "video"
        self._paths = records.shard_paths(os.path.join(data_dir, name), split,
                                          splits[split]["num_shards"])
        for path in self._paths:
            records.require_file(path, f"shard of {name}/{split}")
        self._source = None  # opened lazily, per process

    def _records(self):
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self._paths)
        return self._source

    def __len__(self) -> int:
        return self.meta["splits"][self.split]["num_examples"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples.")
        # Records were written round-robin over shards: example i is record i // S of shard i % S.
        num_shards = len(self._paths)
        shard, position = index % num_shards, index // num_shards
        offset = sum(self._shard_length(s) for s in range(shard))
        record = records.deserialize(self._records()[offset + position])
        return self._decode(record)

    def _shard_length(self, shard: int) -> int:
        total, num_shards = len(self), len(self._paths)
        return total // num_shards + (1 if shard < total % num_shards else 0)

    def _decode(self, record: dict) -> dict[str, Any]:
        what = f"{self.name}/{self.split}:{record['name']}"
        if self.is_video:
            frames = [records.decode_image(f, mode="RGB", what=what) for f in record["frames"]]
            example = {"video": np.stack(frames), "label": np.int32(record["label"])}
        else:
            example = {"image": records.decode_image(record["image"], mode="RGB", what=what),
                       "label": records.decode_image(record["label"], mode="L", what=what)}
        if self.with_names:
            example["name"] = record["name"]
        return example

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __repr__(self) -> str:
        return f"PreparedSource({self.name}/{self.split}, n={len(self)}, shards={len(self._paths)})"


def load_split(name: str, split: str, data_dir: str, *, with_names: bool = False) -> PreparedSource:
    """The prepared split `split` of dataset `name` under `data_dir` (see the module docstring).

    Raises ValueError when the dataset is not prepared (with the command that prepares it), the
    split does not exist, or it is empty.
    """
    return PreparedSource(data_dir, name, split, with_names=with_names)
