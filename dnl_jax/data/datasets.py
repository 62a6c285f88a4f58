"""The datasets, one small object each, and the one registry of them that `prepare` and the
tasks share (scenic's `dataset_lib` registers one module per dataset the same way).

    dataset = datasets.get(config.data.name)
    dataset.task, dataset.drawn, dataset.classes, dataset.val_split
    source = dataset.split(config.data, 'val', with_names=True)

A `Dataset` says which task it belongs to, whether its scenes are drawn in memory (nothing to
prepare: the task's drawn implementation makes them from `config.data.synthetic`) or read from
the prepared array_record files (`python -m dnl_jax.cli.prepare NAME`, builders.py), its
metadata (classes, ignore label, the split validated on) and its benchmark's extras (the ids and
file names of submitted predictions, e.g. Cityscapes' label ids). The parser of each dataset's raw
layout stays in its own module (cityscapes.py, ade20k.py, pascal_context.py, coco.py, video.py).
Adding a dataset is one `Dataset` line in `DATASETS` (and, for a prepared one, its builder).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from dnl_jax import IGNORE_LABEL
from dnl_jax.data import ade20k, cityscapes, pascal_context, pipeline, records


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset (module docstring).

    Attributes:
      name: its `config.data.name`.
      task: the name of its task ('segmentation', 'video', 'detection').
      drawn: scenes drawn in memory from `config.data.synthetic` (nothing to prepare).
      classes: its class names when fixed (else () : set by config.data.num_classes for drawn
        scenes, read from the prepared metadata for videos and COCO).
      palette: the RGB colour (uint8 values) of each class where the benchmark fixes them
        (Cityscapes), else () (dnl_jax.inference.classes spreads colours).
      ignore_label: the label of pixels that no metric counts.
      val_split: the split the trainer validates on ('test' for UCF101, which has no val).
      raw_files: what `prepare`'s --manual_dir must hold, and `module` the data module whose
        docstring describes that layout.
      submission_ids: `train ids uint8 [H, W] -> the benchmark's ids` of submitted predictions
        (None: the train ids), and `prediction_suffix` what the benchmark appends to an
        example's name in the prediction's file name.
      open_split: `(config.data, split, with_names) -> random-access source`; None reads the
        prepared array_record split under config.data.data_dir (`pipeline.prepared_split`).
    """

    name: str
    task: str
    drawn: bool = False
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_label: int = IGNORE_LABEL
    val_split: str = "val"
    raw_files: str = ""
    module: str = ""
    submission_ids: Callable[[np.ndarray], np.ndarray] | None = None
    prediction_suffix: str = ""
    open_split: Callable[..., Any] | None = None

    @property
    def prepared(self) -> bool:
        """Read from files written by `python -m dnl_jax.cli.prepare` (not drawn, no own
        `open_split`)."""
        return not self.drawn and self.open_split is None

    def split(self, data, split: str, *, with_names: bool = False):
        """The random-access source of `split` (examples with 'name' when `with_names`): its
        own `open_split`, else the prepared files (ValueError with the prepare command when they
        are missing). Drawn scenes have none: their task draws them."""
        if self.drawn:
            raise ValueError(f"{self.name!r} is drawn in memory by its task; it has no files.")
        if self.open_split is not None:
            return self.open_split(data, split, with_names=with_names)
        return pipeline.prepared_split(data, split, with_names=with_names)

    def sources(self, data) -> tuple[Any, Any]:
        """(train, `val_split`) sources, checking config.data.num_classes against the classes."""
        train, val = self.split(data, "train"), self.split(data, self.val_split)
        classes = getattr(train, "classes", None)
        if classes is not None and len(classes) != data.num_classes:
            raise ValueError(
                f"config.data.num_classes={data.num_classes} but {data.name} has "
                f"{len(classes)} classes; set --config.data.num_classes={len(classes)}."
            )
        return train, val

    def written_ids(self) -> list[int]:
        """The id each class's train id k is written as in the benchmark's label PNGs
        (`submission_ids` of 0..K-1, K = len(classes)); k itself without `submission_ids`."""
        train_ids = np.arange(len(self.classes), dtype=np.uint8)
        if self.submission_ids is not None:
            train_ids = self.submission_ids(train_ids)
        return [int(v) for v in train_ids]

    def prediction_png_name(self, example_name: str) -> str:
        """The file name of an example's prediction (Cityscapes': NAME_leftImg8bit.png)."""
        return f"{example_name}{self.prediction_suffix}.png"

    def write_prediction(self, prediction: np.ndarray, example_name: str, output_dir: str) -> str:
        """Writes one uint8 `[H, W]` train-id prediction in the benchmark's ids and file name
        under `output_dir`; returns the path."""
        prediction = np.asarray(prediction, np.uint8)
        if self.submission_ids is not None:
            prediction = self.submission_ids(prediction)
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, self.prediction_png_name(example_name))
        with open(path, "wb") as f:
            f.write(records.encode_png(prediction))
        return path


def _ade20k_ids(prediction: np.ndarray) -> np.ndarray:
    return prediction + 1  # the ADE20K challenge's 1..150 (0: other)


DATASETS: dict[str, Dataset] = {
    dataset.name: dataset
    for dataset in (
        Dataset("synthetic", "segmentation", drawn=True),
        Dataset(
            "cityscapes",
            "segmentation",
            classes=tuple(cityscapes.CLASSES),
            palette=cityscapes.PALETTE,
            raw_files=f"{cityscapes.IMAGES_ZIP} and {cityscapes.LABELS_ZIP}",
            module="cityscapes",
            submission_ids=cityscapes.train_ids_to_label_ids,
            prediction_suffix="_leftImg8bit",
        ),
        Dataset(
            "ade20k",
            "segmentation",
            classes=tuple(ade20k.CLASSES),
            raw_files=f"the extracted {ade20k.ROOT}/ folder",
            module="ade20k",
            submission_ids=_ade20k_ids,
        ),
        Dataset(
            "pascal_context",
            "segmentation",
            classes=tuple(pascal_context.CLASSES),
            raw_files=f"{pascal_context.VOC_ROOT}/ and the PASCAL-Context annotations",
            module="pascal_context",
        ),
        Dataset(
            "kinetics",
            "video",
            raw_files="train/ and val/ class folders of videos, or train.csv and val.csv",
            module="video",
        ),
        Dataset(
            "ucf101",
            "video",
            val_split="test",
            raw_files="UCF-101/ and ucfTrainTestlist/",
            module="video",
        ),
        Dataset("synthetic_detection", "detection", drawn=True),
        Dataset(
            "coco",
            "detection",
            raw_files="train2017/, val2017/ and annotations/instances_{train,val}2017.json",
            module="coco",
        ),
    )
}


def get(name: str) -> Dataset:
    """The dataset `name` (ValueError listing the known ones)."""
    if name not in DATASETS:
        raise ValueError(f"config.data.name={name!r}; choose one of {tuple(DATASETS)}.")
    return DATASETS[name]


def of_task(task: str, *, drawn: bool | None = None) -> tuple[str, ...]:
    """The names of `task`'s datasets (only the drawn ones, or only the others, when `drawn` is
    given), in registry order."""
    return tuple(
        name
        for name, dataset in DATASETS.items()
        if dataset.task == task and (drawn is None or dataset.drawn == drawn)
    )


__all__ = ["Dataset", "DATASETS", "get", "of_task"]
