"""The trainer's configuration schema: every key it reads, with defaults, and validation at the edge.

Experiment files in `experiments/configs/` start from `base_config()` and override values, so a
typo on the command line (`--config.optimiser.lr=...`) is already refused by ml_collections; a
ConfigDict built by hand and passed to `train_and_evaluate` is checked here by `validate_config`,
which names the unknown key and suggests the closest known one. `model.kwargs` is free-form: it is
forwarded to `dnl_jax.models.get_model`, which validates its own arguments; on the command line
its entries are set with `--config.model.kwargs.NAME=VALUE` (`pop_model_kwargs_flags`).
`evals` holds one section per evaluator, `config.evals.<name> = dict(type=..., every_steps=...,
...)`, each checked by its evaluator (dnl_jax/evaluators/). Keys of earlier layouts are refused
with the new key to use (`REPLACED_KEYS`).
"""

from __future__ import annotations

import ast
import difflib
import sys
from typing import Any, Sequence

import ml_collections

from dnl_jax import evaluators
from dnl_jax.data.pipeline import (DATASETS, DETECTION_DATASETS, REAL_SEGMENTATION,  # noqa
                                   SEGMENTATION_DATASETS, VIDEO_DATASETS, dataset_task)

PARALLELISMS = ("jit", "pmap")
SYNTHETIC_SCENES = ("beacon", "regions")  # config.data.scenes: data/synthetic.py, data/regions.py
DTYPES = ("float32", "bfloat16")
# Sub-dicts whose keys are not ours to check: the model's arguments (get_model checks them) and
# the evaluators' sections (each evaluator checks its own).
FREE_FORM = ("model.kwargs", "evals")
# Keys of earlier layouts → what replaced them.
REPLACED_KEYS = {
    "eval": "config.evals.val = dict(type='segmentation', mode=..., crop_size=..., stride=..., "
            "scales=..., flip=...) for prepared segmentation datasets, and "
            "config.evals.val_multi_view = dict(type='multi_view', num_clips=..., "
            "num_crops=..., short_side=...) for videos",
    "eval_every_steps": "config.evals.<name>.every_steps",
    "eval_batch_size": "config.evals.val.batch_size (type 'batched')",
}
MODEL_KWARGS_FLAG = "--config.model.kwargs."
EXAMPLE_MODELS = {"segmentation": "dnl_r50-d8", "classification": "dnl_i3d_r50",
                  "detection": "mask_rcnn_r50_fpn_dnl_c4"}
SCHEDULES = ("poly", "step")  # config.optimizer.schedule (train/step.py)


def batched_eval(every_steps: int = 50, batch_size: int = 32, **extra) -> dict:
    """`config.evals.<name>` of the batched evaluator (synthetic scenes, one clip per video)."""
    return dict(type="batched", every_steps=every_steps, batch_size=batch_size, **extra)


def segmentation_eval(every_steps: int, *, mode: str = "whole", crop_size=(0, 0),
                      stride=(0, 0), scales=(1.0,), flip: bool = False) -> dict:
    """`config.evals.<name>` of the per-image segmentation evaluator (prepared datasets)."""
    return dict(type="segmentation", every_steps=every_steps, mode=mode,
                crop_size=tuple(crop_size), stride=tuple(stride), scales=tuple(scales),
                flip=flip)


def coco_eval(every_steps: int = 0, batch_size: int = 8, iou_types=("bbox", "segm"),
              write_results: bool = True) -> dict:
    """`config.evals.<name>` of the COCO box / mask AP evaluator (detection datasets)."""
    return dict(type="coco", every_steps=every_steps, batch_size=batch_size,
                iou_types=tuple(iou_types), write_results=write_results)


def multi_view_eval(num_clips: int = 10, num_crops: int = 3, short_side: int = 0,
                    every_steps: int = 0) -> dict:
    """`config.evals.<name>` of the multi-view video test (by default at the end only)."""
    return dict(type="multi_view", every_steps=every_steps, num_clips=num_clips,
                num_crops=num_crops, short_side=short_side)


def base_config() -> ml_collections.ConfigDict:
    """All keys the trainer understands, with defaults that train the tiny demo model."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "dnl_tiny"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.kwargs = ml_collections.ConfigDict()  # forwarded to get_model(**kwargs)
    # Initialisation (dnl_jax/train/pretrained.py): a converted ImageNet backbone by name
    # (pretrained_dir/NAME, written by `python -m dnl_jax.interop.pretrained`). Real datasets
    # refuse an empty name unless from_scratch=True says so; init_from overrides both.
    c.model.pretrained = ""
    c.model.pretrained_dir = "pretrained"
    c.model.from_scratch = False

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"
    c.data.image_size = 32
    c.data.num_classes = 7
    c.data.num_train = 2048
    c.data.num_val = 256
    c.data.seed = 0
    c.data.noise = 0.1
    # --- analysis (#12): which synthetic scenes ('synthetic' only): 'beacon' (the demo's, one
    # distant cue for every object, dnl_jax/data/synthetic.py) or 'regions' (a distant twin
    # object decides each object's class, thin boundaries; dnl_jax/data/regions.py).
    c.data.scenes = "beacon"
    # Prepared datasets only (ignored by 'synthetic'): where `dnl_jax.data.prepare` wrote them,
    # and the mmseg train pipeline: random resize of base_size (long, short) by a ratio in
    # ratio_range, crop of crop_size (h, w) with cat_max_ratio, flip, photometric distortion.
    c.data.data_dir = "data/prepared"
    c.data.crop_size = (512, 512)
    c.data.base_size = (2048, 512)
    c.data.ratio_range = (0.5, 2.0)
    c.data.cat_max_ratio = 0.75
    # Prepared detection datasets (coco) only: resize keep-ratio to base_size (long, short), e.g.
    # mmdet's (1333, 800); pad to a fixed canvas (h, w), a multiple of 32 that holds every
    # resized image (static shapes); at most max_instances ground-truth objects per image (the
    # rest are counted and reported); filter_empty_gt: train on mmdet's training set (images
    # with annotations, shorter side >= 32) instead of every image.
    c.data.canvas = (1344, 1344)
    c.data.max_instances = 100
    c.data.filter_empty_gt = True
    # 0: gt masks at the canvas size (G × H × W bytes per image); S > 0: each mask resampled to
    # S × S inside its box (data/detection_transforms.py:box_mask_crops), e.g. 56.
    c.data.mask_crop_size = 0
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
    c.total_steps = 100
    c.grad_accum_steps = 1  # micro-batches per optimizer step (batch_size is the effective batch)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    # 'poly' (mmseg: lr_t = (lr - min_lr)(1 - t/T)^power + min_lr) or 'step' (mmdet's
    # MultiStepLR: lr multiplied by decay_factor at each of decay_steps).
    c.optimizer.schedule = "poly"
    c.optimizer.poly_power = 0.9
    c.optimizer.min_lr = 1e-4
    c.optimizer.decay_steps = ()
    c.optimizer.decay_factor = 0.1
    c.optimizer.warmup_steps = 0
    c.optimizer.warmup_ratio = 0.1  # warm-up starts at lr * warmup_ratio
    c.optimizer.grad_clip_norm = 0.0  # 0 disables clipping
    # Parameters left untrained ('/'-joined path prefixes, e.g. mmdet's frozen_stages=1:
    # ('backbone/conv1', 'backbone/bn1', 'backbone/layer1_')): no update, no weight decay.
    c.optimizer.frozen = ()
    # ((pattern, multiplier), ...) on '/'-joined parameter paths (mmengine custom_keys); read by
    # the loss/optimizer branch, set by the recipes.
    c.optimizer.weight_decay_multipliers = ()

    c.parallelism = "jit"  # both shard the batch over every device (data parallel)
    # The jit driver's device mesh (train/parallel.py): 'data' shards the batch, 'space' shards
    # each image along H (each clip along T) with exact non-local blocks
    # (dnl_jax/sharded_attention.py). data * space = all devices; -1: what the other leaves.
    # space > 1 is for inputs whose activations do not fit one device; pmap needs space = 1.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, space=1))

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 2  # the last K, plus the best by the task's val metric (best_metric)
    c.checkpoint.keep_best = True
    c.init_from = ""  # a checkpoint directory (with a 'state' item) to take params/batch_stats from

    # One section per evaluator (dnl_jax/evaluators/): run at step 0, every `every_steps` and
    # at the end (every_steps=0: at the end only); written to the logs under its name. 'val'
    # ranks the checkpoints. The synthetic default: batched val scenes.
    c.evals = ml_collections.ConfigDict()
    c.evals.val = batched_eval()

    c.log_every_steps = 10
    c.progress_bar = True
    c.curves_figure = True
    c.attention_figure = True  # attention.png (segmentation DNL heads only; see dnl_jax/viz.py)

    # Loss and optimizer options (issue 11). Weight-decay multipliers: ((pattern, multiplier),
    # ...) matched as substrings of '/'-joined parameter paths, longest pattern first, like
    # mmseg's paramwise_cfg.custom_keys (dnl_jax/train/step.py:weight_decay_multiplier).
    c.optimizer.weight_decay_multipliers = ()
    # Synthetic scenes: the fraction of each label map set to 255 (one random rectangle).
    c.data.ignore_fraction = 0.0
    return c


def check_model_task(model_task: str, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when the model's task is not the dataset's (a segmentation model on
    videos, or the reverse)."""
    task = dataset_task(config.data.name)
    if model_task != task:
        example = EXAMPLE_MODELS[task]
        raise ValueError(f"config.model.name={config.model.name!r} is a {model_task} model but "
                         f"config.data.name={config.data.name!r} is a {task} dataset; choose a "
                         f"{task} model, e.g. --config.model.name={example}.")


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
    """Raises ValueError for any key not in `base_config()`, suggesting the closest known one
    (for keys of an earlier layout: what replaced them)."""
    known = _flatten(base_config())
    for path in _flatten(config):
        old = path.split(".")[0]
        if old in REPLACED_KEYS:
            raise ValueError(f"config.{path} is no longer a key; use {REPLACED_KEYS[old]}.")
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
    for key in ("total_steps", "batch_size", "grad_accum_steps", "log_every_steps"):
        _require(int(c[key]) >= 1, f"config.{key}={c[key]} must be >= 1.")
    _require(c.checkpoint.every_steps >= 1 and c.checkpoint.keep >= 1,
             "config.checkpoint.every_steps and config.checkpoint.keep must be >= 1.")
    _require(c.data.num_classes >= 2, "config.data.num_classes must be >= 2.")
    _require(c.optimizer.lr > 0 and 0 <= c.optimizer.min_lr <= c.optimizer.lr,
             "need 0 < config.optimizer.lr and 0 <= config.optimizer.min_lr <= lr.")
    _require(0 <= c.optimizer.warmup_steps < c.total_steps,
             f"config.optimizer.warmup_steps={c.optimizer.warmup_steps} must be in "
             f"[0, total_steps={c.total_steps}).")
    _require(c.optimizer.grad_clip_norm >= 0, "config.optimizer.grad_clip_norm must be >= 0.")
    _check_schedule(c)
    data_shards, space = mesh_shape(c, num_devices)
    _check_batch_divisibility(c, num_devices=data_shards,
                              what="devices" if space == 1 else
                              "data shards (devices / config.mesh.space)")
    _DATA_CHECKS[c.data.name](c)
    evaluators.check_config(c, num_devices=num_devices, num_processes=num_processes)


def _check_schedule(c) -> None:
    opt = c.optimizer
    _require(opt.schedule in SCHEDULES,
             f"config.optimizer.schedule={opt.schedule!r}; choose one of {SCHEDULES}.")
    steps = tuple(opt.decay_steps)
    _require(all(isinstance(s, int) and 0 < s < c.total_steps for s in steps)
             and list(steps) == sorted(set(steps)),
             f"config.optimizer.decay_steps={steps} must be increasing integers in (0, "
             f"total_steps={c.total_steps}).")
    _require(opt.schedule == "step" or not steps,
             "config.optimizer.decay_steps is read by schedule='step' only; set "
             "--config.optimizer.schedule=step or leave decay_steps empty.")
    _require(0 < opt.decay_factor <= 1, "config.optimizer.decay_factor must be in (0, 1].")
    _require(all(isinstance(p, str) and p for p in opt.frozen),
             f"config.optimizer.frozen={tuple(opt.frozen)!r} must be non-empty path prefixes, "
             "e.g. ('backbone/conv1', 'backbone/bn1', 'backbone/layer1_').")


def _pair_ok(value) -> bool:
    return len(tuple(value)) == 2 and all(int(v) >= 1 for v in value)


def _check_synthetic_data(c) -> None:
    """Keys of the embedded synthetic scenes."""
    _require(c.data.num_classes >= 5 and c.data.num_classes % 2 == 1,
             f"config.data.num_classes={c.data.num_classes}: the synthetic scenes need an odd "
             "number >= 5 (background, two beacon classes, two classes per colour), e.g. 7.")
    _require(c.data.scenes in SYNTHETIC_SCENES,
             f"config.data.scenes={c.data.scenes!r}; choose one of {SYNTHETIC_SCENES}.")
    _require(c.data.num_train >= c.batch_size, "config.data.num_train must be >= batch_size.")


def _check_segmentation_data(c) -> None:
    """Keys of prepared segmentation datasets. data_dir is checked when the data is opened."""
    for key in ("crop_size", "base_size"):
        _require(_pair_ok(c.data[key]),
                 f"config.data.{key}={tuple(c.data[key])} must be two positive sizes.")
    low, high = c.data.ratio_range
    _require(0 < low <= high, f"config.data.ratio_range={tuple(c.data.ratio_range)} must be "
             "(low, high) with 0 < low <= high.")
    _require(0 < c.data.cat_max_ratio <= 1, "config.data.cat_max_ratio must be in (0, 1].")


def _check_video_data(c) -> None:
    """Keys of video datasets: clip sampling and the square crop."""
    for key in ("clip_len", "frame_stride"):
        _require(int(c.data[key]) >= 1, f"config.data.{key}={c.data[key]} must be >= 1.")
    crop = tuple(c.data.crop_size)
    _require(_pair_ok(crop) and crop[0] == crop[1],
             f"config.data.crop_size={crop}: video crops are square, e.g. (224, 224).")
    low, high = tuple(c.data.short_side_range)
    _require(crop[0] <= low <= high,
             f"config.data.short_side_range={(low, high)} must be (low, high) with crop side "
             f"{crop[0]} <= low <= high: frames are rescaled to it, then cropped.")


def _check_synthetic_detection_data(c) -> None:
    """Keys of the embedded synthetic detection scenes (data/synthetic_detection.py)."""
    _require(c.data.num_classes >= 2 and c.data.num_classes % 2 == 0,
             f"config.data.num_classes={c.data.num_classes}: the synthetic detection scenes have "
             "two classes per object colour (the distant beacon picks one); use an even number, "
             "e.g. 4.")
    _require(c.data.image_size % 32 == 0 and c.data.image_size >= 64,
             f"config.data.image_size={c.data.image_size} must be a multiple of 32 (the "
             "detector's stride), at least 64.")
    _require(c.data.num_train >= c.batch_size, "config.data.num_train must be >= batch_size.")


def _check_detection_data(c) -> None:
    """Keys of prepared detection datasets (COCO)."""
    _require(_pair_ok(c.data.base_size), f"config.data.base_size={tuple(c.data.base_size)} must "
             "be the (long, short) resize scale, e.g. (1333, 800).")
    canvas = tuple(c.data.canvas)
    _require(_pair_ok(canvas) and all(int(v) % 32 == 0 for v in canvas),
             f"config.data.canvas={canvas} must be (h, w), multiples of 32 (the detector's "
             "stride), e.g. (1344, 1344).")
    _require(min(canvas) >= min(c.data.base_size) and max(canvas) >= max(c.data.base_size),
             f"config.data.canvas={canvas} cannot hold an image resized to base_size="
             f"{tuple(c.data.base_size)}; for landscape and portrait images use "
             f"({max(c.data.base_size)}, {max(c.data.base_size)}) rounded up to 32.")
    _require(int(c.data.max_instances) >= 1, "config.data.max_instances must be >= 1.")
    _require(int(c.data.mask_crop_size) >= 0, "config.data.mask_crop_size must be >= 0 (0: "
             "full-canvas masks).")


# The checks of each dataset's own keys.
_DATA_CHECKS = {"synthetic": _check_synthetic_data,
                "synthetic_detection": _check_synthetic_detection_data,
                "coco": _check_detection_data,
                **{name: _check_segmentation_data for name in REAL_SEGMENTATION},
                **{name: _check_video_data for name in VIDEO_DATASETS}}


def mesh_shape(c, num_devices: int) -> tuple[int, int]:
    """(data, space) of `config.mesh` on `num_devices` devices (-1 resolved); ValueError for a
    mesh that does not tile the devices, or space > 1 with pmap."""
    data, space = int(c.mesh.data), int(c.mesh.space)
    _require(space >= 1 and num_devices % space == 0,
             f"config.mesh.space={space} must be >= 1 and divide the {num_devices} devices.")
    _require(data == -1 or data * space == num_devices,
             f"config.mesh.data={data} x config.mesh.space={space} must equal the "
             f"{num_devices} devices; set config.mesh.data=-1 to use the rest.")
    _require(space == 1 or c.parallelism == "jit",
             f"config.mesh.space={space}: spatial sharding needs the jit driver; set "
             "--config.parallelism=jit (pmap shards the batch only) or config.mesh.space=1.")
    return num_devices // space, space


def _check_batch_divisibility(c, *, num_devices: int, what: str = "devices") -> None:
    micro = c.batch_size // c.grad_accum_steps
    _require(c.batch_size % c.grad_accum_steps == 0,
             f"config.batch_size={c.batch_size} is not divisible by "
             f"config.grad_accum_steps={c.grad_accum_steps}.")
    _require(micro % num_devices == 0,
             f"the micro-batch batch_size/grad_accum_steps={micro} must be divisible by the "
             f"{num_devices} {what}; change config.batch_size or config.grad_accum_steps.")


def pop_model_kwargs_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Splits `--config.model.kwargs.NAME=VALUE` flags off `argv` (ml_collections only overrides
    keys the config file already has, and model.kwargs is free-form). VALUE is a Python literal
    (`0`, `0.5`, `True`, `(1, 2)`, `{'thresh': 0.7, 'min_kept': 100000}`) or else a string.
    Returns (the other arguments, {NAME: value}); ValueError for a flag without '=VALUE'."""
    rest, kwargs = [], {}
    for arg in argv:
        if not arg.startswith(MODEL_KWARGS_FLAG):
            rest.append(arg)
            continue
        name, sep, text = arg[len(MODEL_KWARGS_FLAG):].partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"{arg!r}: write --config.model.kwargs.NAME=VALUE, e.g. "
                             "--config.model.kwargs.dropout_rate=0.")
        try:
            kwargs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[name] = text
    return rest, kwargs


def take_model_kwargs_flags(program: str) -> dict[str, Any]:
    """`pop_model_kwargs_flags(sys.argv)` for a command line, before absl parses its flags:
    sys.argv keeps the other flags (config_flags reads its overrides from sys.argv itself) and
    the model's arguments are returned; a malformed flag exits with one line."""
    try:
        argv, kwargs = pop_model_kwargs_flags(sys.argv)
    except ValueError as error:
        sys.exit(f"{program}: {error}")
    sys.argv[:] = argv
    return kwargs


def set_model_kwargs(config: ml_collections.ConfigDict, kwargs: dict[str, Any]) -> None:
    """Sets `config.model.kwargs[NAME] = value` for each entry (the model checks the names and
    values when it is built: an unknown name is refused there, listing the valid ones)."""
    with config.unlocked():
        for name, value in kwargs.items():
            config.model.kwargs[name] = value
