"""The segmentation task's two input implementations, one chosen per dataset (`Dataset.drawn`):

- `DrawnScenes` (`DRAWN`): scenes drawn in memory from `config.data.synthetic` (data/synthetic.py
  'beacon', data/regions.py 'regions'), model-ready at one size; evaluated in batches.
- `DatasetImages` (`IMAGES`): images of their own sizes with label maps, read through the dataset
  unit (`Dataset.split`: the prepared files, or the unit's own source), augmented by mmseg's
  train pipeline (`config.data.segmentation`) and evaluated per image.

The task (`tasks.base.InputsByDataset`) picks one by the dataset unit and delegates; neither
knows which dataset it serves beyond its unit (classes, validation split, submission format).
"""

from __future__ import annotations

from collections.abc import Callable

from dnl_jax.data import datasets, pipeline, transforms
from dnl_jax.data.regions import RegionScenes
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.tasks.base import EvalInputs, drawn_image_shape, pair_ok, require

SCENES = {"beacon": SyntheticSegmentation, "regions": RegionScenes}  # data.synthetic.scenes


class DrawnScenes:
    """Scenes drawn in memory (module docstring); reads `config.data.synthetic`."""

    section = "synthetic"

    def check(self, config) -> None:
        data, scenes = config.data, config.data.synthetic
        require(
            data.num_classes >= 5 and data.num_classes % 2 == 1,
            f"config.data.num_classes={data.num_classes}: the synthetic scenes need an "
            "odd number >= 5 (background, two beacon classes, two classes per colour), "
            "e.g. 7.",
        )
        require(
            scenes.scenes in SCENES,
            f"config.data.synthetic.scenes={scenes.scenes!r}; choose one of {tuple(SCENES)}.",
        )
        require(
            scenes.num_train >= config.batch_size,
            "config.data.synthetic.num_train must be >= batch_size.",
        )

    def sources(self, data, dataset: datasets.Dataset):
        del dataset
        drawn = data.synthetic
        common = dict(
            image_size=drawn.image_size,
            num_classes=data.num_classes,
            seed=data.seed,
            noise=drawn.noise,
            ignore_fraction=drawn.ignore_fraction,
        )
        scenes = SCENES[drawn.scenes]
        return (
            scenes(drawn.num_train, split="train", **common),
            scenes(drawn.num_val, split="val", **common),
        )

    def eval_source(self, data, dataset: datasets.Dataset, split: str):
        return pipeline.synthetic_val(self.sources(data, dataset), split)

    def analysis_source(self, data, dataset: datasets.Dataset, split: str):
        return dict(zip(("train", "val"), self.sources(data, dataset), strict=False))[split]

    def example_shape(self, data) -> tuple[int, ...]:
        return drawn_image_shape(data)

    def train_transform(self, data):
        return None  # drawn normalised at their final size, padded ground truth included

    def figure_preprocess(self, data) -> Callable[[dict], dict] | None:
        return None  # drawn already normalised

    def eval_inputs(self, data, dataset: datasets.Dataset, *, task: str) -> EvalInputs:
        del dataset
        return EvalInputs.of(
            "scenes",
            task,
            data,
            num_examples=int(data.synthetic.num_val),
            num_examples_key="config.data.synthetic.num_val",
        )


class DatasetImages:
    """Images of their own sizes (module docstring); reads `config.data.segmentation`."""

    section = "segmentation"

    def check(self, config) -> None:
        section = config.data.segmentation
        for key in ("crop_size", "base_size"):
            require(
                pair_ok(section[key]),
                f"config.data.segmentation.{key}={tuple(section[key])} must be two positive sizes.",
            )
        low, high = section.ratio_range
        require(
            0 < low <= high,
            f"config.data.segmentation.ratio_range="
            f"{tuple(section.ratio_range)} must be (low, high) with 0 < low <= high.",
        )
        require(
            0 < section.cat_max_ratio <= 1,
            "config.data.segmentation.cat_max_ratio must be in (0, 1].",
        )

    def sources(self, data, dataset: datasets.Dataset):
        return dataset.sources(data)

    def eval_source(self, data, dataset: datasets.Dataset, split: str):
        return dataset.split(data, split, with_names=True)

    def analysis_source(self, data, dataset: datasets.Dataset, split: str):
        return dataset.split(data, split)

    def example_shape(self, data) -> tuple[int, ...]:
        return (*(int(v) for v in data.segmentation.crop_size), 3)

    def train_transform(self, data):
        section = data.segmentation
        return transforms.SegmentationTrainTransform(
            crop_size=tuple(section.crop_size),
            base_size=tuple(section.base_size),
            ratio_range=tuple(section.ratio_range),
            cat_max_ratio=float(section.cat_max_ratio),
        )

    def figure_preprocess(self, data) -> Callable[[dict], dict] | None:
        """`example -> {'image': model input, 'label', 'display'}` for drawing the attention
        maps of raw val examples: resized to `base_size` (aspect kept, label by nearest
        neighbour) and normalised as in evaluation."""
        base_size = tuple(data.segmentation.base_size)

        def preprocess(example: dict) -> dict:
            image, label = transforms.resize_keep_ratio(
                example["image"], example["label"], base_size
            )
            return {"image": transforms.normalize(image), "label": label, "display": image}

        return preprocess

    def eval_inputs(self, data, dataset: datasets.Dataset, *, task: str) -> EvalInputs:
        return EvalInputs.of(
            "images",
            task,
            data,
            base_size=tuple(data.segmentation.base_size),
            write_prediction=dataset.write_prediction,
        )


DRAWN, IMAGES = DrawnScenes(), DatasetImages()

__all__ = ["SCENES", "DrawnScenes", "DatasetImages", "DRAWN", "IMAGES"]
