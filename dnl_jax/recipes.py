"""The published training/evaluation recipes as ConfigDicts; `experiments/configs/*.py` call these.

Keys (the recipe configs' schema; the trainer's own schema may name some differently):
  model.name, model.num_classes, model.kwargs (forwarded to dnl_jax.models.get_model)
  data.name, data.data_dir, data.crop_size (h, w), data.base_size (long, short) for the random
    resize (ratio data.ratio_range) and the test resize, data.cat_max_ratio, data.batch_size
    (global), data.seed
  optimizer.lr, optimizer.momentum, optimizer.weight_decay
  schedule.total_steps, schedule.power, schedule.min_lr (poly: (lr-min)(1-t/T)^p + min)
  eval.mode ('whole'|'slide'), eval.crop_size, eval.stride, eval.scales, eval.flip
Video recipes add data.clip_len, data.frame_stride, data.short_side_range, eval.num_clips,
eval.num_crops, eval.short_side.
"""

from __future__ import annotations

import ml_collections

from dnl_jax.data import ade20k, cityscapes, pascal_context

NUM_CLASSES = {"cityscapes": len(cityscapes.CLASSES), "ade20k": len(ade20k.CLASSES),
               "pascal_context": len(pascal_context.CLASSES)}


def segmentation_recipe(*, dataset: str, model: str, crop_size: tuple[int, int],
                        base_size: tuple[int, int], batch_size: int, total_steps: int,
                        lr: float = 0.01, weight_decay: float = 5e-4, eval_mode: str = "whole",
                        eval_crop_size=None, eval_stride=None, ohem: dict | None = None,
                        data_dir: str = "data/prepared") -> ml_collections.ConfigDict:
    """An mmseg-style segmentation recipe: SGD momentum 0.9, poly 0.9 down to 1e-4, the mmseg
    train pipeline (resize 0.5-2.0, crop with cat_max_ratio 0.75, flip, photometric)."""
    if dataset not in NUM_CLASSES:
        raise ValueError(f"dataset {dataset!r}; choose one of {sorted(NUM_CLASSES)}.")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict({"name": model, "num_classes": NUM_CLASSES[dataset],
                                         "kwargs": {"ohem": ohem} if ohem else {}})
    c.data = ml_collections.ConfigDict({
        "name": dataset, "data_dir": data_dir, "crop_size": tuple(crop_size),
        "base_size": tuple(base_size), "ratio_range": (0.5, 2.0), "cat_max_ratio": 0.75,
        "batch_size": batch_size, "seed": 0})
    c.optimizer = ml_collections.ConfigDict({"lr": lr, "momentum": 0.9,
                                             "weight_decay": weight_decay})
    c.schedule = ml_collections.ConfigDict({"total_steps": total_steps, "power": 0.9,
                                            "min_lr": 1e-4})
    c.eval = ml_collections.ConfigDict({
        "mode": eval_mode, "crop_size": tuple(eval_crop_size) if eval_crop_size else None,
        "stride": tuple(eval_stride) if eval_stride else None, "scales": (1.0,), "flip": False})
    return c


def cityscapes_mmseg(model: str, total_steps: int = 80_000) -> ml_collections.ConfigDict:
    """mmseg Cityscapes 512x1024: batch 8 (4 GPUs x 2), slide test 512x1024 stride 341x683."""
    return segmentation_recipe(dataset="cityscapes", model=model, crop_size=(512, 1024),
                               base_size=(2048, 1024), batch_size=8, total_steps=total_steps,
                               eval_mode="slide", eval_crop_size=(512, 1024),
                               eval_stride=(341, 683))


def ade20k_mmseg(model: str, total_steps: int = 160_000) -> ml_collections.ConfigDict:
    """mmseg ADE20K 512x512: batch 16 (4 x 4), resize to (2048, 512), whole-image test."""
    return segmentation_recipe(dataset="ade20k", model=model, crop_size=(512, 512),
                               base_size=(2048, 512), batch_size=16, total_steps=total_steps)


def video_recipe(*, model: str, num_classes: int = 400, clip_len: int = 32, frame_stride: int = 2,
                 crop_size: int = 224, batch_size: int = 64, total_steps: int = 400_000,
                 data_dir: str = "data/prepared") -> ml_collections.ConfigDict:
    """The original non-local video recipe: 32 frames at stride 2, short side U[256, 320],
    224 crop, SGD lr 0.01 (batch 64) wd 1e-4; test 10 clips x 3 crops at short side 256.
    (The original steps the lr down at fixed iterations; we use the poly schedule.)"""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict({"name": model, "num_classes": num_classes, "kwargs": {}})
    c.data = ml_collections.ConfigDict({
        "name": "kinetics", "data_dir": data_dir, "clip_len": clip_len,
        "frame_stride": frame_stride, "crop_size": crop_size, "short_side_range": (256, 320),
        "batch_size": batch_size, "seed": 0})
    c.optimizer = ml_collections.ConfigDict({"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4})
    c.schedule = ml_collections.ConfigDict({"total_steps": total_steps, "power": 0.9,
                                            "min_lr": 0.0})
    c.eval = ml_collections.ConfigDict({"num_clips": 10, "num_crops": 3, "short_side": 256})
    return c
