"""tfds builders of the real datasets: raw downloads → array_record files that `sources.py` reads.

One `tfds.core.GeneratorBasedBuilder` per dataset; its `_generate_examples` is the parser of the
dataset's own module (cityscapes.py, ade20k.py, pascal_context.py, coco.py, video.py), which knows
the raw layout and the label mapping. The raw files come from `DownloadConfig(manual_dir=...)`;
nothing is ever downloaded (`try_download_gcs=False`, and the builders ask the download manager
for nothing).

Features written (`file_format='array_record'`, so every split is a random-access source):

    segmentation  {'name': Text, 'image': Image uint8 [H, W, 3],
                   'label': Image uint8 [H, W, 1] (train ids, 255 = ignore)}
    detection     {'name': Text, 'image': Image uint8 [H, W, 3], 'image_id': int64, 'height',
                   'width': int32, per instance: 'boxes' float64 [n, 4] (x1, y1, x2, y2),
                   'labels' / 'category_ids' int32 [n], 'iscrowd' bool [n], 'areas' float64 [n],
                   'annotation_ids' int64 [n], 'mask_counts' Sequence(Text) (COCO RLE counts)}
    video         {'name': Text, 'video': Sequence(Image uint8 [H, W, 3], JPEG) → [T, H, W, 3],
                   'label': Scalar int64 (class index)}

Images reach tfds already encoded (the original PNG/JPEG bytes, or PNG/JPEG that we encode with
PIL), so neither building nor reading imports TensorFlow: tfds needs TF only to encode arrays and
for its `Video` feature, which is why frames are a Sequence of Images. `DatasetInfo.metadata`
(metadata.json) holds 'task', 'classes', 'ignore_label', 'label_mapping' and, per split, the
pixels whose raw label was outside the format's range (set to 255). Examples keep the parser's
sorted order (`disable_shuffling`); grain shuffles at read time.

UCF101: tfds's own `ucf101` builder downloads the videos itself and decodes them with TensorFlow;
neither is allowed here, so `Ucf101` below reads the official files from manual_dir instead, with
tfds's class indices (classInd.txt number - 1). A user with network access and TensorFlow can still
build tfds's version (`tfds build ucf101 --data_dir DIR`), but `load_split` reads only the datasets
built by this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from dnl_jax.data import ade20k, cityscapes, coco, pascal_context, records, video
from dnl_jax.data.sources import VERSION as PREPARED_VERSION

INSTRUCTIONS = "Place the raw download in manual_dir as the dataset module's docstring describes."


class _Prepared(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What every builder shares: the version, the metadata and the empty-split check."""

    VERSION = tfds.core.Version(PREPARED_VERSION)
    RELEASE_NOTES = {PREPARED_VERSION: "First release of the dnl_jax preparation."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _make_info(self, features: dict, description: str, meta: dict) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(**meta, splits={}),
            disable_shuffling=True,
        )

    def _generate_examples(
        self,
        split: str,
        make_examples: Callable[[], Iterator[dict]],
        split_stats: Callable[[str], dict] | None = None,
    ):
        """(name, record) of every record of `split` (records have the features' keys);
        ValueError if there are none."""
        count = 0
        for record in make_examples():
            count += 1
            yield record["name"], record
        if count == 0:
            raise ValueError(
                f"split {split!r} of {self.name!r} has no examples; check that the "
                "raw files are where the dataset's layout expects them."
            )
        self.info.metadata["splits"][split] = {
            "num_examples": count,
            **(split_stats(split) if split_stats else {}),
        }


class _Segmentation(_Prepared, skip_registration=True):
    """A segmentation dataset parsed by `PARSER` (a module with build_splits and META)."""

    PARSER = None

    def __init__(self, **kwargs):
        self._out_of_range = records.OutOfRangeCounter()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "name": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.Image(shape=(None, None, 1)),
        }
        return self._make_info(
            features, self.PARSER.__doc__, {"task": "segmentation", **self.PARSER.META}
        )

    def _split_generators(self, dl_manager):
        splits = self.PARSER.build_splits(os.fspath(dl_manager.manual_dir), self._out_of_range)
        return {
            split: self._generate_examples(split, make, self._out_of_range.split_stats)
            for split, make in splits.items()
        }


class Cityscapes(_Segmentation, skip_registration=True):
    name = "cityscapes"
    PARSER = cityscapes


class Ade20k(_Segmentation, skip_registration=True):
    name = "ade20k"
    PARSER = ade20k


class PascalContext(_Segmentation, skip_registration=True):
    name = "pascal_context"
    PARSER = pascal_context


class Coco(_Prepared, skip_registration=True):
    """COCO 2017 instances (coco.py): per image its annotations, masks as COCO RLE."""

    name = "coco"

    def __init__(self, **kwargs):
        self._report = coco.ParseReport()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        instances = lambda dtype, *shape: tfds.features.Tensor(  # noqa: E731
            shape=(None, *shape), dtype=dtype
        )
        features = {
            "name": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": tfds.features.Scalar(dtype=np.int64),
            "height": tfds.features.Scalar(dtype=np.int32),
            "width": tfds.features.Scalar(dtype=np.int32),
            "boxes": instances(np.float64, 4),
            "labels": instances(np.int32),
            "category_ids": instances(np.int32),
            "iscrowd": instances(np.bool_),
            "areas": instances(np.float64),
            "annotation_ids": instances(np.int64),
            "mask_counts": tfds.features.Sequence(tfds.features.Text()),
        }
        return self._make_info(features, coco.__doc__, {"task": "detection"})

    def _split_generators(self, dl_manager):
        splits, meta = coco.build_splits(os.fspath(dl_manager.manual_dir), self._report)
        self.info.metadata.update(meta)
        return {
            split: self._generate_examples(split, make, self._report.split_stats)
            for split, make in splits.items()
        }


class _Video(_Prepared, skip_registration=True):
    """Videos listed by `LISTING(manual_dir)` → ({split: [(path, class name)]}, class names);
    frames decoded with FFmpeg (PyAV), short side `short_side`, at most `max_frames` per video."""

    LISTING = None

    def __init__(
        self, *, short_side: int = 256, max_frames: int = 300, num_workers: int = 1, **kwargs
    ):
        self._frames = dict(short_side=short_side, max_frames=max_frames, num_workers=num_workers)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "name": tfds.features.Text(),
            "video": tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
            ),
            "label": tfds.features.Scalar(dtype=np.int64),
        }
        return self._make_info(features, video.__doc__, {"task": "video"})

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        listed, classes = type(self).LISTING(manual_dir)
        self.info.metadata.update(
            classes=list(classes),
            short_side=self._frames["short_side"],
            max_frames=self._frames["max_frames"],
        )
        splits = video.build_splits(manual_dir, listed, classes, **self._frames)
        return {split: self._generate_examples(split, make) for split, make in splits.items()}


class Kinetics(_Video, skip_registration=True):
    name = "kinetics"
    LISTING = staticmethod(video.kinetics_listing)


class Ucf101(_Video, skip_registration=True):
    name = "ucf101"
    LISTING = staticmethod(video.ucf101_listing)


# The tfds builder of every prepared dataset of the registry (data/datasets.py: its raw files,
# task and metadata).
BUILDERS = {
    builder.name: builder for builder in (Cityscapes, Ade20k, PascalContext, Coco, Kinetics, Ucf101)
}
