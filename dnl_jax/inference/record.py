"""The preprocessing record: what a checkpoint's inputs need, saved next to it.

    WORKDIR/preprocessing.json          (the trainer, for every step of the run)
    OUT_DIR/preprocessing.json          (`python -m dnl_jax.interop.convert IN OUT_DIR`)

It holds the model (registry name and options, or the architecture read from a converted
checkpoint), the task, the dataset, the input normalisation (mean and std per RGB channel on the
0-255 scale: a pixel becomes (rgb - mean) / std), the channel order, the resize policy, the
inference settings of the recipe's test (whole or slide windows), the class names, colours and the
ids written in label PNGs. `predict`, `explain` and `export` read it and nothing else about the
data. For checkpoints saved before the record existed, `find_record` derives it from the run's
`config.json` (or the converter's `conversion.json`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from dnl_jax import tasks
from dnl_jax.data import synthetic, transforms
from dnl_jax.inference import classes, files
from dnl_jax.inference.video import video_settings

RECORD_FILE = "preprocessing.json"
VERSION = 1
RESIZE_POLICIES = ("none", "keep_ratio", "fixed", "detection")


@dataclasses.dataclass(frozen=True)
class PreprocessingRecord:
    """What a checkpoint's inputs need (module docstring).

    resize: {'policy': 'none'} (inferred at the input's size), {'policy': 'keep_ratio',
      'base_size': (long, short)} (mmseg's test Resize, aspect kept), {'policy': 'fixed',
      'size': (h, w)} or {'policy': 'detection', 'base_size', 'canvas'} (mmdet's keep-ratio
      resize, then padded to the canvas).
    inference: {'mode': 'whole' | 'slide', 'crop_size', 'stride', 'align_corners'} for
      segmentation; the task's own settings otherwise.
    architecture: `build_segmentor` keyword arguments of a converted checkpoint whose model is
      not a registry name ('auto'); None otherwise.
    """

    task: str
    model: str
    num_classes: int
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: dict
    inference: dict
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, ...], ...]
    label_ids: tuple[int, ...]
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    architecture: dict | None = None
    output_stride: int = 8
    channel_order: str = "RGB"
    source: str = "trainer"
    version: int = VERSION

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (or 0-255 float) `[..., 3]` RGB → float32 model input (rgb - mean) / std."""
        return transforms.normalize(np.asarray(rgb), self.mean, self.std)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=_plain)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "the record") -> PreprocessingRecord:
        known = {field.name for field in dataclasses.fields(cls)}
        missing = sorted(
            field.name
            for field in dataclasses.fields(cls)
            if field.name not in values
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"{where} lacks {missing}; write it again (see docs/predict.md).")
        kept = {key: value for key, value in values.items() if key in known}
        for key in ("mean", "std", "class_names", "label_ids"):
            kept[key] = tuple(kept[key])
        kept["palette"] = tuple(tuple(int(c) for c in colour) for colour in kept["palette"])
        return cls(**kept)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "to_dict"):  # a ConfigDict inside model.kwargs
        return value.to_dict()
    return repr(value)  # never fail a training run over a record entry


# ------------------------------------------------------------------------ derived from a config
def _segmentation_inference(config) -> dict:
    """Whole or slide settings of the config's first 'segmentation' evaluator (whole if none)."""
    settings: dict[str, Any] = {"mode": "whole", "crop_size": None, "stride": None}
    for section in config.get("evals", {}).values():
        if section.get("type") == "segmentation":
            settings["mode"] = section.get("mode", "whole")
            if settings["mode"] == "slide":
                settings["crop_size"] = [int(v) for v in section["crop_size"]]
                settings["stride"] = [int(v) for v in section["stride"]]
            break
    settings["align_corners"] = bool(config.model.kwargs.get("align_corners", False))
    return settings


def _normalisation(config, task) -> tuple[tuple[float, ...], tuple[float, ...], dict]:
    """(mean, std, resize) of the config's dataset (0-255 RGB scale), a dataset of `task`."""
    name = config.data.name
    mean: tuple[float, ...]
    std: tuple[float, ...]
    if name in tasks.SYNTHETIC_DATASETS:  # drawn in [0, 1], normalised as synthetic.py does
        mean = (255.0 * synthetic.NORMALISATION_MEAN,) * 3
        std = (255.0 * synthetic.NORMALISATION_STD,) * 3
        if task.name != "detection":
            return mean, std, {"policy": "none"}
        side = int(config.data.synthetic.image_size)  # the detector's canvas: the scene size
        return mean, std, {"policy": "detection", "base_size": [side, side], "canvas": [side] * 2}
    mean, std = tuple(transforms.IMAGENET_MEAN), tuple(transforms.IMAGENET_STD)
    if task.name == "detection":  # mmdet's test resize, padded to a canvas
        section = config.data.detection
        resize = {"policy": "detection", "base_size": list(section.base_size)}
        return mean, std, {**resize, "canvas": list(section.canvas)}
    if task.name == "segmentation":
        base = [int(v) for v in config.data.segmentation.base_size]
        return mean, std, {"policy": "keep_ratio", "base_size": base}
    return mean, std, {"policy": "none"}


def record_from_config(config: ml_collections.ConfigDict, task, source: str = "trainer"):
    """The record of a run's config (a ConfigDict as the trainer validates it, or the run's
    config.json read back) whose dataset is of `task` (resolved by the caller: the trainer's
    `tasks.build`, or `find_record`'s lookup)."""
    mean, std, resize = _normalisation(config, task)
    num_classes = int(config.data.num_classes)
    names, palette, ids = classes.dataset_classes(config.data.name, num_classes)
    kwargs = config.model.kwargs
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    inference = _segmentation_inference(config) if task.name == "segmentation" else {}
    if task.name == "detection":
        inference = {"score_threshold": 0.3}
    if task.name == "video":
        inference = video_settings(config)
    return PreprocessingRecord(
        task=task.name,
        model=str(config.model.name),
        num_classes=num_classes,
        dataset=str(config.data.name),
        mean=mean,
        std=std,
        resize=resize,
        inference=inference,
        class_names=tuple(names),
        palette=tuple(tuple(int(c) for c in colour) for colour in palette),
        label_ids=tuple(ids),
        model_kwargs={**kwargs, "dtype": config.model.get("dtype", None)},
        output_stride=int(kwargs.get("output_stride", 8)),
        source=source,
    )


def record_for_conversion(
    summary: Mapping, architecture: dict | None, output_stride: int = 8
) -> PreprocessingRecord:
    """The record of a converted mmseg segmentor (`interop.convert`'s summary): mmseg's
    ImageNet normalisation of RGB inputs and whole-image test; the dataset guessed from the
    class count (19 Cityscapes, 150 ADE20K, 59 PASCAL-Context)."""
    num_classes = int(summary["num_classes"])
    dataset = classes.dataset_for_classes(num_classes)
    names, palette, ids = classes.dataset_classes(dataset, num_classes)
    stride = int((architecture or {}).get("output_stride", output_stride))
    return PreprocessingRecord(
        task="segmentation",
        model=str(summary["model"]),
        num_classes=num_classes,
        dataset=dataset,
        mean=tuple(transforms.IMAGENET_MEAN),
        std=tuple(transforms.IMAGENET_STD),
        resize={"policy": "none"},
        inference={"mode": "whole", "crop_size": None, "stride": None, "align_corners": False},
        class_names=tuple(names),
        palette=tuple(tuple(int(c) for c in colour) for colour in palette),
        label_ids=tuple(ids),
        model_kwargs={"output_stride": stride},
        architecture=architecture,
        output_stride=stride,
        source="convert",
    )


# ------------------------------------------------------------------------------- files
def write_record(directory: str, record: PreprocessingRecord) -> str:
    """Writes `directory/preprocessing.json` atomically; returns its path."""
    path = os.path.join(directory, RECORD_FILE)
    files.write_atomic(path, record.to_json().encode("utf-8"))
    return path


def read_record(path: str) -> PreprocessingRecord:
    try:
        with open(path, encoding="utf-8") as file:
            values = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} could not be read ({type(error).__name__}).") from None
    return PreprocessingRecord.from_dict(values, where=path)


def _config_json(path: str) -> ml_collections.ConfigDict:
    with open(path, encoding="utf-8") as file:
        return ml_collections.ConfigDict(json.load(file))


def find_record(step_dir: str) -> PreprocessingRecord:
    """The record of checkpoint step `step_dir`: the nearest preprocessing.json (the step's
    directory, its parent, the run's workdir), else derived from the run's config.json or the
    converter's conversion.json. ValueError saying what to pass when there is none."""
    step_dir = os.path.abspath(step_dir)
    around = [step_dir, os.path.dirname(step_dir), os.path.dirname(os.path.dirname(step_dir))]
    for directory in around:
        if os.path.isfile(os.path.join(directory, RECORD_FILE)):
            return read_record(os.path.join(directory, RECORD_FILE))
    for directory in around:
        if os.path.isfile(os.path.join(directory, "config.json")):
            config = _config_json(os.path.join(directory, "config.json"))
            task = tasks.for_dataset(config.data.name)
            return record_from_config(config, task, source="derived from config.json")
    if os.path.isfile(os.path.join(step_dir, "conversion.json")):
        with open(os.path.join(step_dir, "conversion.json"), encoding="utf-8") as file:
            summary = json.load(file)
        model = summary.get("model")
        if model != "auto" and tasks.for_model(model).name == "segmentation":
            return record_for_conversion(summary, None)
        raise ValueError(
            f"{step_dir} has a conversion.json but no {RECORD_FILE} (a video or detection model, "
            "or a segmentor converted before records existed); pass --config CONFIG.py, or "
            "convert a segmentor again."
        )
    raise ValueError(
        f"no {RECORD_FILE} or config.json next to {step_dir}; pass --config CONFIG.py, the "
        "config it was trained with."
    )


__all__ = [
    "PreprocessingRecord",
    "RECORD_FILE",
    "record_from_config",
    "record_for_conversion",
    "write_record",
    "read_record",
    "find_record",
]
