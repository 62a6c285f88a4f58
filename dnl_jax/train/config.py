"""The trainer's configuration schema: every key it reads, with defaults, and validation at the edge.

Experiment files in `experiments/configs/` start from `base_config()` and override values, so a
typo on the command line (`--config.optimiser.lr=...`) is already refused by ml_collections; a
ConfigDict built by hand and passed to `train_and_evaluate` is checked here by `validate_config`,
which names the unknown key and suggests the closest known one. `model.kwargs` is free-form: it is
forwarded to `dnl_jax.models.get_model`, which validates its own arguments.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

PARALLELISMS = ("jit", "pmap")
# Prepared segmentation datasets (python -m dnl_jax.data.prepare NAME ...) the trainer reads.
REAL_SEGMENTATION = ("cityscapes", "ade20k", "pascal_context")
SEGMENTATION_DATASETS = ("synthetic",) + REAL_SEGMENTATION
# Prepared action-recognition datasets (Kinetics layout, split 'val' evaluated).
VIDEO_DATASETS = ("kinetics",)
DATASETS = SEGMENTATION_DATASETS + VIDEO_DATASETS
EVAL_MODES = ("whole", "slide")
DTYPES = ("float32", "bfloat16")
# Sub-dicts whose keys are not ours to check.
FREE_FORM = ("model.kwargs",)


def base_config() -> ml_collections.ConfigDict:
    """All keys the trainer understands, with defaults that train the tiny demo model."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "dnl_tiny"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.kwargs = ml_collections.ConfigDict()  # forwarded to get_model(**kwargs)

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"
    c.data.image_size = 32
    c.data.num_classes = 7
    c.data.num_train = 2048
    c.data.num_val = 256
    c.data.seed = 0
    c.data.noise = 0.1
    # Prepared datasets only (ignored by 'synthetic'): where `dnl_jax.data.prepare` wrote them,
    # and the mmseg train pipeline: random resize of base_size (long, short) by a ratio in
    # ratio_range, crop of crop_size (h, w) with cat_max_ratio, flip, photometric distortion.
    c.data.data_dir = "data/prepared"
    c.data.crop_size = (512, 512)
    c.data.base_size = (2048, 512)
    c.data.ratio_range = (0.5, 2.0)
    c.data.cat_max_ratio = 0.75
    # Video datasets only: clips of clip_len frames every frame_stride-th frame, short side
    # rescaled to U[short_side_range], a square crop of crop_size, horizontal flip.
    c.data.clip_len = 32
    c.data.frame_stride = 2
    c.data.short_side_range = (256, 320)
    # Input workers of prepared datasets (perf, issue 16): grain worker processes that decode and
    # augment batches in parallel (0 = in this process), and read-ahead threads per process.
    c.data.worker_processes = 0
    c.data.worker_threads = 4

    c.batch_size = 16  # global, over all hosts and devices
    c.eval_batch_size = 32
    c.total_steps = 100
    c.grad_accum_steps = 1  # micro-batches per optimizer step (batch_size is the effective batch)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.poly_power = 0.9
    c.optimizer.min_lr = 1e-4
    c.optimizer.warmup_steps = 0
    c.optimizer.warmup_ratio = 0.1  # warm-up starts at lr * warmup_ratio
    c.optimizer.grad_clip_norm = 0.0  # 0 disables clipping

    c.parallelism = "jit"
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the 'data' axis; -1 = all

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 2  # the last K, plus the best by the task's val metric (best_metric)
    c.checkpoint.keep_best = True
    c.init_from = ""  # a checkpoint directory (with a 'state' item) to take params/batch_stats from

    # Periodic and final evaluation of prepared datasets, per image at its own size after the
    # resize to data.base_size (dnl_jax.evaluate.predict_scores); 'synthetic' evaluates whole
    # fixed-size batches and ignores this section.
    c.eval = ml_collections.ConfigDict()
    c.eval.mode = "whole"  # or "slide": windows of crop_size every stride
    c.eval.crop_size = (0, 0)  # (h, w); slide only
    c.eval.stride = (0, 0)  # (h, w); slide only
    c.eval.scales = (1.0,)
    c.eval.flip = False
    # Video: periodic evaluation is top-1 accuracy of one clip per video (the middle clip in
    # time, centre crop, short side eval.short_side; 0 = the crop side), data-parallel. With
    # multi_view the final evaluation adds the test protocol of `python -m dnl_jax.evaluate`:
    # num_clips x num_crops views per video, softmax averaged (one device per host).
    c.eval.num_clips = 10
    c.eval.num_crops = 3
    c.eval.short_side = 0
    c.eval.multi_view = True

    c.eval_every_steps = 50
    c.log_every_steps = 10
    c.progress_bar = True
    c.curves_figure = True
    c.attention_figure = True  # attention.png (segmentation DNL heads only; see dnl_jax/viz.py)
    return c


def dataset_task(name: str) -> str:
    """'classification' for the video datasets, else 'segmentation' (the model's task must match).
    """
    return "classification" if name in VIDEO_DATASETS else "segmentation"


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    items = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)) and path not in FREE_FORM:
            items.update(_flatten(value, path + "."))
        else:
            items[path] = value
    return items


def check_known_keys(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for any key not in `base_config()`, suggesting the closest known one."""
    known = _flatten(base_config())
    for path in _flatten(config):
        if path not in known and not any(path.startswith(f + ".") for f in FREE_FORM):
            close = difflib.get_close_matches(path, list(known), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown config key {path!r}.{hint} Known keys: see "
                             f"dnl_jax/train/config.py:base_config().")
    missing = sorted(set(known) - set(_flatten(config)))
    if missing:
        raise ValueError(f"config is missing keys {missing}; build configs from "
                         "dnl_jax.train.config.base_config().")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    num_processes: int) -> None:
    """Checks keys, values and their combinations against the devices at hand.

    Raises ValueError naming the offending keys and how to fix them.
    """
    check_known_keys(config)
    c = config
    _require(c.parallelism in PARALLELISMS,
             f"config.parallelism={c.parallelism!r}; choose one of {PARALLELISMS}.")
    _require(c.model.dtype in DTYPES, f"config.model.dtype={c.model.dtype!r}; choose {DTYPES}.")
    _require(c.data.name in DATASETS,
             f"config.data.name={c.data.name!r}; choose one of {DATASETS}.")
    for key in ("total_steps", "batch_size", "eval_batch_size", "grad_accum_steps",
                "eval_every_steps", "log_every_steps"):
        _require(int(c[key]) >= 1, f"config.{key}={c[key]} must be >= 1.")
    _require(c.checkpoint.every_steps >= 1 and c.checkpoint.keep >= 1,
             "config.checkpoint.every_steps and config.checkpoint.keep must be >= 1.")
    _require(c.data.num_classes >= 2, "config.data.num_classes must be >= 2.")
    _require(c.data.name != "synthetic" or (c.data.num_classes >= 5
                                            and c.data.num_classes % 2 == 1),
             f"config.data.num_classes={c.data.num_classes}: the synthetic scenes need an odd "
             "number >= 5 (background, two beacon classes, two classes per colour), e.g. 7.")
    _require(c.optimizer.lr > 0 and 0 <= c.optimizer.min_lr <= c.optimizer.lr,
             "need 0 < config.optimizer.lr and 0 <= config.optimizer.min_lr <= lr.")
    _require(0 <= c.optimizer.warmup_steps < c.total_steps,
             f"config.optimizer.warmup_steps={c.optimizer.warmup_steps} must be in "
             f"[0, total_steps={c.total_steps}).")
    _require(c.optimizer.grad_clip_norm >= 0, "config.optimizer.grad_clip_norm must be >= 0.")
    _require(c.mesh.data == -1 or c.mesh.data == num_devices,
             f"config.mesh.data={c.mesh.data} but {num_devices} devices are visible; use -1 "
             "(all devices) until more mesh axes exist.")
    _check_batch_divisibility(c, num_devices=num_devices, num_processes=num_processes)
    if c.data.name in VIDEO_DATASETS:
        _check_video_data(c)
    elif c.data.name != "synthetic":
        _check_segmentation_data(c)


def _pair_ok(value) -> bool:
    return len(tuple(value)) == 2 and all(int(v) >= 1 for v in value)


def _check_segmentation_data(c) -> None:
    """Keys of prepared segmentation datasets. data_dir is checked when the data is opened."""
    for key in ("crop_size", "base_size"):
        _require(_pair_ok(c.data[key]),
                 f"config.data.{key}={tuple(c.data[key])} must be two positive sizes.")
    low, high = c.data.ratio_range
    _require(0 < low <= high, f"config.data.ratio_range={tuple(c.data.ratio_range)} must be "
             "(low, high) with 0 < low <= high.")
    _require(0 < c.data.cat_max_ratio <= 1, "config.data.cat_max_ratio must be in (0, 1].")
    _require(c.eval.mode in EVAL_MODES,
             f"config.eval.mode={c.eval.mode!r}; choose one of {EVAL_MODES}.")
    if c.eval.mode == "slide":
        _require(_pair_ok(c.eval.crop_size) and _pair_ok(c.eval.stride),
                 f"config.eval.mode='slide' needs config.eval.crop_size and config.eval.stride "
                 f"(h, w) >= 1, got {tuple(c.eval.crop_size)} and {tuple(c.eval.stride)}.")
    _require(len(c.eval.scales) >= 1 and all(s > 0 for s in c.eval.scales),
             f"config.eval.scales={tuple(c.eval.scales)} must be positive ratios.")


def _check_video_data(c) -> None:
    """Keys of video datasets: clip sampling, the square crop and the test views."""
    for key in ("clip_len", "frame_stride"):
        _require(int(c.data[key]) >= 1, f"config.data.{key}={c.data[key]} must be >= 1.")
    crop = tuple(c.data.crop_size)
    _require(_pair_ok(crop) and crop[0] == crop[1],
             f"config.data.crop_size={crop}: video crops are square, e.g. (224, 224).")
    low, high = tuple(c.data.short_side_range)
    _require(crop[0] <= low <= high,
             f"config.data.short_side_range={(low, high)} must be (low, high) with crop side "
             f"{crop[0]} <= low <= high: frames are rescaled to it, then cropped.")
    for key in ("num_clips", "num_crops"):
        _require(int(c.eval[key]) >= 1, f"config.eval.{key}={c.eval[key]} must be >= 1.")
    _require(c.eval.short_side == 0 or c.eval.short_side >= crop[0],
             f"config.eval.short_side={c.eval.short_side} must be 0 (the crop side) or >= the "
             f"crop side {crop[0]}.")


def _check_batch_divisibility(c, *, num_devices: int, num_processes: int) -> None:
    micro = c.batch_size // c.grad_accum_steps
    _require(c.batch_size % c.grad_accum_steps == 0,
             f"config.batch_size={c.batch_size} is not divisible by "
             f"config.grad_accum_steps={c.grad_accum_steps}.")
    _require(micro % num_devices == 0,
             f"the micro-batch batch_size/grad_accum_steps={micro} must be divisible by the "
             f"{num_devices} devices; change config.batch_size or config.grad_accum_steps.")
    _require(c.eval_batch_size % num_devices == 0,
             f"config.eval_batch_size={c.eval_batch_size} must be divisible by the "
             f"{num_devices} devices.")
    if c.data.name == "synthetic":  # prepared datasets have their own sizes
        _require(c.data.num_val >= num_processes and c.data.num_train >= c.batch_size,
                 "config.data.num_train must be >= batch_size and num_val >= the number of "
                 "hosts.")
