"""The published training/evaluation recipes as the trainer's ConfigDicts.

Every recipe starts from `dnl_jax.train.config.base_config()` (the one schema; see there for
every key) and sets what the recipe fixes: model.name, model.kwargs (e.g. ohem), data.name,
data.num_classes, data.data_dir, data.crop_size (h, w), data.base_size (long, short) for the
random resize (ratio data.ratio_range) and the test resize, data.cat_max_ratio, batch_size
(global), total_steps, optimizer.lr / momentum / weight_decay, optimizer.poly_power and
optimizer.min_lr (poly: (lr - min)(1 - t/T)^p + min), the per-image evaluator
`evals.val` (type 'segmentation': mode 'whole'|'slide', crop_size, stride, scales, flip), and
the evaluation/checkpoint intervals.

Video recipes set the video keys of the same schema: data.clip_len, data.frame_stride,
data.short_side_range, a square data.crop_size, the one-clip evaluator `evals.val` (type
'batched') and the test views of `evals.val_multi_view` (type 'multi_view': num_clips,
num_crops, short_side; run at the end of training and by `python -m dnl_jax.evaluate`).
"""

from __future__ import annotations

import ml_collections

from dnl_jax.data import ade20k, cityscapes, pascal_context
from dnl_jax.train.config import base_config, batched_eval, multi_view_eval, segmentation_eval

NUM_CLASSES = {"cityscapes": len(cityscapes.CLASSES), "ade20k": len(ade20k.CLASSES),
               "pascal_context": len(pascal_context.CLASSES)}


def segmentation_recipe(*, dataset: str, model: str, crop_size: tuple[int, int],
                        base_size: tuple[int, int], batch_size: int, total_steps: int,
                        lr: float = 0.01, weight_decay: float = 5e-4, eval_mode: str = "whole",
                        eval_crop_size=None, eval_stride=None, ohem: dict | None = None,
                        data_dir: str = "data/prepared") -> ml_collections.ConfigDict:
    """An mmseg-style segmentation recipe: SGD momentum 0.9, poly 0.9 down to 1e-4, the mmseg
    train pipeline (resize 0.5-2.0, crop with cat_max_ratio 0.75, flip, photometric);
    evaluation and checkpoints every total_steps / 10 steps (mmseg's 8k of 80k)."""
    if dataset not in NUM_CLASSES:
        raise ValueError(f"dataset {dataset!r}; choose one of {sorted(NUM_CLASSES)}.")
    if eval_mode == "slide" and (eval_crop_size is None or eval_stride is None):
        raise ValueError("eval_mode='slide' needs eval_crop_size and eval_stride.")
    c = base_config()
    c.model.name = model
    if ohem:
        c.model.kwargs.ohem = dict(ohem)
    c.data.name = dataset
    c.data.num_classes = NUM_CLASSES[dataset]
    c.data.data_dir = data_dir
    c.data.crop_size = tuple(crop_size)
    c.data.base_size = tuple(base_size)
    c.data.ratio_range = (0.5, 2.0)
    c.data.cat_max_ratio = 0.75
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.optimizer.lr = lr
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = weight_decay
    c.optimizer.poly_power = 0.9
    c.optimizer.min_lr = 1e-4
    c.optimizer.warmup_steps = 0
    c.evals.val = segmentation_eval(max(1, total_steps // 10), mode=eval_mode,
                                    crop_size=eval_crop_size or (0, 0),
                                    stride=eval_stride or (0, 0))
    c.checkpoint.every_steps = max(1, total_steps // 10)
    c.log_every_steps = 50
    return c


def cityscapes_mmseg(model: str, total_steps: int = 80_000) -> ml_collections.ConfigDict:
    """mmseg Cityscapes 512x1024: batch 8 (4 GPUs x 2), whole-image test at 2048x1024 (mmseg's
    dnl/nonlocal/fcn 512x1024 configs keep `test_cfg=dict(mode='whole')` of
    `_base_/models/*_r50-d8.py`; only their 769x769 configs slide)."""
    return segmentation_recipe(dataset="cityscapes", model=model, crop_size=(512, 1024),
                               base_size=(2048, 1024), batch_size=8, total_steps=total_steps)


def ade20k_mmseg(model: str, total_steps: int = 160_000) -> ml_collections.ConfigDict:
    """mmseg ADE20K 512x512: batch 16 (4 x 4), resize to (2048, 512), whole-image test."""
    return segmentation_recipe(dataset="ade20k", model=model, crop_size=(512, 512),
                               base_size=(2048, 512), batch_size=16, total_steps=total_steps)


def pascal_context_official(model: str) -> ml_collections.ConfigDict:
    """The official DNL code's PASCAL-Context-59 recipe (configs/seg/pcontext/*59c*.conf):
    short side resized to 520 (long side at most 1040) then randomly by 0.5-2.0, 520x520 crops,
    batch 16, 30k iterations, SGD lr 0.001 weight decay 1e-4, whole-image single-scale val
    (its test adds scales 0.5-2.0: --config.evals.val.scales). mmseg's own PASCAL-Context-59 recipe
    differs: 480x480 crops of a (520, 520) resize, lr 0.004, slide 480x480 stride 320x320."""
    return segmentation_recipe(dataset="pascal_context", model=model, crop_size=(520, 520),
                               base_size=(1040, 520), batch_size=16, total_steps=30_000,
                               lr=0.001, weight_decay=1e-4)


def video_recipe(*, model: str, num_classes: int = 400, clip_len: int = 32, frame_stride: int = 2,
                 crop_size: int = 224, batch_size: int = 64, total_steps: int = 400_000,
                 data_dir: str = "data/prepared") -> ml_collections.ConfigDict:
    """The original non-local video recipe: 32 frames at stride 2, short side U[256, 320],
    224 crop, SGD lr 0.01 (batch 64) wd 1e-4; test 10 clips x 3 crops at short side 256.
    (The original steps the lr down at fixed iterations; we use the poly schedule.)
    Evaluation (one clip per video) and checkpoints every total_steps / 10 steps; the final
    evaluation adds the 30-view test.
    """
    c = base_config()
    c.model.name = model
    c.data.name = "kinetics"
    c.data.num_classes = num_classes
    c.data.data_dir = data_dir
    c.data.crop_size = (crop_size, crop_size)
    c.data.clip_len = clip_len
    c.data.frame_stride = frame_stride
    c.data.short_side_range = (256, 320)
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.optimizer.lr = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.poly_power = 0.9
    c.optimizer.min_lr = 0.0
    c.evals.val = batched_eval(max(1, total_steps // 10), short_side=256)
    c.evals.val_multi_view = multi_view_eval(num_clips=10, num_crops=3, short_side=256)
    c.checkpoint.every_steps = max(1, total_steps // 10)
    c.log_every_steps = 50
    return c
