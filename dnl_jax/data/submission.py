"""Predictions in a benchmark's submission format: the ids and file names that the official
evaluation servers read (Cityscapes' label ids and `*_leftImg8bit.png` names, ADE20K's 1..150)."""

from __future__ import annotations

import os

import numpy as np

from dnl_jax.data import cityscapes, records


def prediction_png_name(dataset: str, name: str) -> str:
    """File name of a prediction: Cityscapes' `CITY_SEQ_FRAME_leftImg8bit.png`, else NAME.png."""
    return f"{name}_leftImg8bit.png" if dataset == "cityscapes" else f"{name}.png"


def submission_ids(dataset: str, prediction: np.ndarray) -> np.ndarray:
    """uint8 train ids `[H, W]` → the benchmark's ids: Cityscapes label ids
    (`cityscapes.train_ids_to_label_ids`), ADE20K train id + 1 (the challenge's 1..150), others
    unchanged."""
    prediction = np.asarray(prediction, np.uint8)
    if dataset == "cityscapes":
        return cityscapes.train_ids_to_label_ids(prediction)
    if dataset == "ade20k":
        return prediction + 1
    return prediction


def write_prediction_png(prediction: np.ndarray, dataset: str, name: str, output_dir: str) -> str:
    """Writes one uint8 `[H, W]` train-id prediction of `dataset` in its submission ids and file
    name under `output_dir`; returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, prediction_png_name(dataset, name))
    with open(path, "wb") as f:
        f.write(records.encode_png(submission_ids(dataset, prediction)))
    return path


__all__ = ["prediction_png_name", "submission_ids", "write_prediction_png"]
