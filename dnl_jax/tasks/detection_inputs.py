"""The detection task's two input implementations, one chosen per dataset (`Dataset.drawn`):

- `DrawnDetectionScenes` (`DRAWN`): the synthetic detection scenes drawn in memory from
  `config.data.synthetic` (data/synthetic_detection.py), model-ready at `image_size`², with
  padded ground truth.
- `DetectionImages` (`IMAGES`): images read through the dataset unit (`Dataset.split`: COCO's
  prepared files), resized keep-ratio to `base_size`, normalised and padded to a fixed `canvas`
  (`config.data.detection`), evaluated with the split's COCO ground truth.

The task (`tasks.base.InputsByDataset`) picks one by the dataset unit and delegates; neither
knows which dataset it serves beyond its unit.
"""

from __future__ import annotations

from dnl_jax.data import coco, datasets, detection_transforms, pipeline
from dnl_jax.data.sources import Subset
from dnl_jax.data.synthetic_detection import SyntheticDetection
from dnl_jax.tasks.base import drawn_image_shape, pair_ok, require
from dnl_jax.tasks.segmentation import SEGMENTATION_SCENE_KEYS, SYNTHETIC_SECTION


class DetectionEvalSource:
    """A prepared detection split as evaluation inputs: example i is the eval preprocess
    (resize keep-ratio to `scale`, normalise, pad to `canvas`) of the raw example i, and
    `coco_ground_truth()` the split's COCO ground truth at the original sizes (for
    evaluators/coco.py)."""

    def __init__(self, raw, *, scale, canvas):
        self.raw, self.scale, self.canvas = raw, tuple(scale), tuple(canvas)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict:
        return detection_transforms.detection_eval_preprocess(
            self.raw[index], scale=self.scale, canvas=self.canvas
        )

    def coco_ground_truth(self) -> tuple[dict, list[int]]:
        return coco.coco_ground_truth(self.raw)


class DrawnDetectionScenes:
    """The drawn detection scenes (module docstring); reads `config.data.synthetic`."""

    section = "synthetic"

    def check(self, config) -> None:
        data, drawn = config.data, config.data.synthetic
        require(
            data.num_classes >= 2 and data.num_classes % 2 == 0,
            f"config.data.num_classes={data.num_classes}: the synthetic detection scenes "
            "have two classes per object colour (the distant beacon picks one); use an even "
            "number, e.g. 4.",
        )
        require(
            drawn.image_size % 32 == 0 and drawn.image_size >= 64,
            f"config.data.synthetic.image_size={drawn.image_size} must be a multiple of 32 "
            "(the detector's stride), at least 64.",
        )
        require(
            drawn.num_train >= config.batch_size,
            "config.data.synthetic.num_train must be >= batch_size.",
        )
        for key in SEGMENTATION_SCENE_KEYS:  # what only the segmentation scenes read
            require(
                drawn[key] == SYNTHETIC_SECTION[key],
                f"config.data.synthetic.{key}={drawn[key]!r} is read by the segmentation "
                f"scenes only; the detection scenes ({data.name!r}) have no {key}: "
                "remove the override.",
            )

    def sources(self, data, dataset: datasets.Dataset):
        del dataset
        drawn = data.synthetic
        common = dict(
            image_size=drawn.image_size,
            num_colours=data.num_classes // 2,
            seed=data.seed,
            noise=drawn.noise,
        )
        return (
            SyntheticDetection(drawn.num_train, split="train", **common),
            SyntheticDetection(drawn.num_val, split="val", **common),
        )

    def eval_source(self, data, dataset: datasets.Dataset, split: str):
        return pipeline.synthetic_val(self.sources(data, dataset), split)

    def example_shape(self, data) -> tuple[int, ...]:
        return drawn_image_shape(data)

    def train_transform(self, data):
        return None  # drawn normalised at their final size, padded ground truth included


class DetectionImages:
    """Images resized and padded to a fixed canvas (module docstring); reads
    `config.data.detection`."""

    section = "detection"

    def check(self, config) -> None:
        section = config.data.detection
        base, canvas = tuple(section.base_size), tuple(section.canvas)
        require(
            pair_ok(base),
            f"config.data.detection.base_size={base} must be the (long, "
            "short) resize scale, e.g. (1333, 800).",
        )
        require(
            pair_ok(canvas) and all(int(v) % 32 == 0 for v in canvas),
            f"config.data.detection.canvas={canvas} must be (h, w), multiples of 32 (the "
            "detector's stride), e.g. (1344, 1344).",
        )
        require(
            min(canvas) >= min(base) and max(canvas) >= max(base),
            f"config.data.detection.canvas={canvas} cannot hold an image resized to "
            f"base_size={base}; for landscape and portrait images use ({max(base)}, "
            f"{max(base)}) rounded up to 32.",
        )
        require(
            int(section.max_instances) >= 1, "config.data.detection.max_instances must be >= 1."
        )
        require(
            int(section.mask_crop_size) >= 0,
            "config.data.detection.mask_crop_size must be >= 0 (0: full-canvas masks).",
        )

    def sources(self, data, dataset: datasets.Dataset):
        """The training split (mmdet's filter_empty_gt / min_size 32 filter when
        `filter_empty_gt`) and the validation split as evaluation inputs."""
        train, val = dataset.sources(data)
        if data.detection.filter_empty_gt:
            train = Subset(train, coco.train_indices(train))
        return train, self._evaluation_inputs(data, val)

    @staticmethod
    def _evaluation_inputs(data, raw) -> DetectionEvalSource:
        return DetectionEvalSource(
            raw, scale=data.detection.base_size, canvas=data.detection.canvas
        )

    def eval_source(self, data, dataset: datasets.Dataset, split: str):
        return self._evaluation_inputs(data, dataset.split(data, split))

    def example_shape(self, data) -> tuple[int, ...]:
        return (*(int(v) for v in data.detection.canvas), 3)

    def train_transform(self, data):
        section = data.detection
        return detection_transforms.DetectionTrainTransform(
            scale=tuple(section.base_size),
            canvas=tuple(section.canvas),
            max_instances=int(section.max_instances),
            mask_crop_size=int(section.mask_crop_size),
        )


DRAWN, IMAGES = DrawnDetectionScenes(), DetectionImages()

__all__ = ["DetectionEvalSource", "DrawnDetectionScenes", "DetectionImages", "DRAWN", "IMAGES"]
