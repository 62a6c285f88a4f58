"""The trainer's configuration schema: every key it reads, with defaults, and validation at the
edge.

Experiment files in `experiments/configs/` start from `base_config()` and override values, so a
typo on the command line (`--config.optimiser.lr=...`) is already refused by ml_collections; a
ConfigDict built by hand and passed to `train_and_evaluate` is checked here by `validate_config`,
which names the unknown key and suggests the closest known one. `model.kwargs` is free-form: it is
forwarded to `dnl_jax.tasks.get_model`, which validates its own arguments; on the command line
its entries are set with `--config.model.kwargs.NAME=VALUE` (dnl_jax/cli/flags.py).
`evals` holds one section per evaluator, `config.evals.<name> = dict(type=..., every_steps=...,
...)`, each checked by its evaluator (dnl_jax/evaluators/). Keys of earlier layouts are refused
with the new key to use (`REPLACED_KEYS`).
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

from dnl_jax import evaluators, tasks
from dnl_jax.train import distributed

PARALLELISMS = ("jit", "pmap")
DTYPES = ("float32", "bfloat16")
# Sub-dicts whose keys are not ours to check: the model's arguments (get_model checks them) and
# the evaluators' sections (each evaluator checks its own).
FREE_FORM = ("model.kwargs", "evals")
# config.data's keys before the per-task sections (dnl_jax/tasks/).
_FLAT_DATA_KEYS = (
    "image_size",
    "num_train",
    "num_val",
    "noise",
    "scenes",
    "ignore_fraction",
    "crop_size",
    "base_size",
    "ratio_range",
    "cat_max_ratio",
    "canvas",
    "max_instances",
    "filter_empty_gt",
    "mask_crop_size",
    "clip_len",
    "frame_stride",
    "short_side_range",
)


def _moved_data_keys() -> dict[str, str]:
    """'data.KEY' → the task sections' keys that replaced it (e.g. config.data.crop_size →
    config.data.segmentation.crop_size or config.data.video.crop_size)."""
    moved: dict[str, list[str]] = {}
    for section, keys in tasks.data_sections().items():
        for key in keys:
            if key in _FLAT_DATA_KEYS:
                moved.setdefault(f"data.{key}", []).append(
                    f"config.data.{section}.{key} ({section})"
                )
    return {old: " or ".join(new) for old, new in moved.items()}


# Keys of earlier layouts (a top-level key or a dotted path) → what replaced them.
REPLACED_KEYS = {
    "eval": "config.evals.val = dict(type='segmentation', mode=..., crop_size=..., stride=..., "
    "scales=..., flip=...) for prepared segmentation datasets, and "
    "config.evals.val_multi_view = dict(type='multi_view', num_clips=..., "
    "num_crops=..., short_side=...) for videos",
    "eval_every_steps": "config.evals.<name>.every_steps",
    "eval_batch_size": "config.evals.val.batch_size (type 'batched')",
    **_moved_data_keys(),
}
CONFIG_FLAG = "--config."
MODEL_KWARGS_FLAG = "--config.model.kwargs."
SCHEDULES = ("poly", "step")  # config.optimizer.schedule (train/step.py)


def base_config() -> ml_collections.ConfigDict:
    """All keys the trainer understands, with defaults that train the tiny demo model."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "dnl_tiny"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.kwargs = ml_collections.ConfigDict()  # the model's options (tasks.build)
    # Initialisation (dnl_jax/train/initialisation.py): a converted ImageNet backbone by name
    # (pretrained_dir/NAME, written by `python -m dnl_jax.cli.pretrained`). Real datasets
    # refuse an empty name unless from_scratch=True says so; init_from overrides both.
    c.model.pretrained = ""
    c.model.pretrained_dir = "pretrained"
    c.model.from_scratch = False

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"
    c.data.num_classes = 7
    c.data.seed = 0
    # Prepared datasets: where `python -m dnl_jax.cli.prepare` wrote them, and the input
    # workers: grain worker processes that decode and augment batches in parallel (0 = in this
    # process), and read-ahead threads per process.
    c.data.data_dir = "data/prepared"
    c.data.worker_processes = 0
    c.data.worker_threads = 4
    # One section per task (dnl_jax/tasks/: synthetic, segmentation, video, detection). A run
    # reads those of its dataset's task only and refuses an override of any other.
    for section, keys in tasks.data_sections().items():
        c.data[section] = ml_collections.ConfigDict(keys)

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
    # ((pattern, multiplier), ...) matched as substrings of '/'-joined parameter paths, longest
    # pattern first, like mmseg's paramwise_cfg.custom_keys (train/step.py), set by the recipes.
    c.optimizer.weight_decay_multipliers = ()

    c.parallelism = "jit"  # both shard the batch over every device (data parallel)
    # The jit driver's device mesh (train/parallel.py): 'data' shards the batch, 'space' shards
    # each image along H (each clip along T) with exact non-local blocks
    # (dnl_jax/core/attention/sharded.py). data * space = all devices; -1: what the other leaves.
    # space > 1 is for inputs whose activations do not fit one device; pmap needs space = 1.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, space=1))

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50
    # Also save when this many seconds passed since the last save (0: off); whichever of the
    # two comes first. Several hosts agree on it without a per-step collective (checkpoint.py).
    c.checkpoint.every_seconds = 0
    c.checkpoint.keep = 2  # the last K, plus the best by the task's val metric (best_metric)
    c.checkpoint.keep_best = True
    # Coordination-service timeouts of multi-process runs (train/distributed.py).
    c.distributed = distributed.default_config()
    c.init_from = ""  # a checkpoint directory (with a 'state' item) to take params/batch_stats from

    # One section per evaluator (dnl_jax/evaluators/): run at step 0, every `every_steps` and
    # at the end (every_steps=0: at the end only); written to the logs under its name. 'val'
    # ranks the checkpoints. The synthetic default: batched val scenes.
    c.evals = ml_collections.ConfigDict()
    c.evals.val = evaluators.section("batched")

    c.log_every_steps = 10
    c.progress_bar = True
    c.curves_figure = True
    c.attention_figure = True  # the task's figure (attention.png, detections.png; tasks/)

    return c


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
        check_key(path, known)
    missing = sorted(set(known) - set(_flatten(config)))
    if missing:
        raise ValueError(
            f"config is missing keys {missing}; build configs from "
            "dnl_jax.train.config.base_config()."
        )


def check_key(path: str, known: dict[str, Any]) -> None:
    """ValueError for `config.<path>` when it is not among the `known` keys: what replaced it
    (`REPLACED_KEYS`), or the closest known keys. Keys under `FREE_FORM` sections pass."""
    for old in (path, path.split(".")[0], ".".join(path.split(".")[:2])):
        if old in REPLACED_KEYS:
            raise ValueError(f"config.{path} is no longer a key; use {REPLACED_KEYS[old]}.")
    if path not in known and not any(path == f or path.startswith(f + ".") for f in FREE_FORM):
        close = difflib.get_close_matches(path, list(known), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown config key {path!r}.{hint} Known keys: see "
            f"dnl_jax/train/config.py:base_config()."
        )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_config(
    config: ml_collections.ConfigDict, task: tasks.Task, *, num_devices: int, num_processes: int
) -> None:
    """Checks keys, values and their combinations against the devices at hand, for the run's
    resolved `task` (`tasks.build(config).task`: the task of config.data.name).

    Raises ValueError naming the offending keys and how to fix them.
    """
    check_known_keys(config)
    c = config
    _require(
        c.parallelism in PARALLELISMS,
        f"config.parallelism={c.parallelism!r}; choose one of {PARALLELISMS}.",
    )
    _require(c.model.dtype in DTYPES, f"config.model.dtype={c.model.dtype!r}; choose {DTYPES}.")
    tasks.check_unused_sections(c.data, task)
    for key in ("total_steps", "batch_size", "grad_accum_steps", "log_every_steps"):
        _require(int(c[key]) >= 1, f"config.{key}={c[key]} must be >= 1.")
    _require(
        c.checkpoint.every_steps >= 1 and c.checkpoint.keep >= 1,
        "config.checkpoint.every_steps and config.checkpoint.keep must be >= 1.",
    )
    _require(
        c.checkpoint.every_seconds >= 0,
        f"config.checkpoint.every_seconds={c.checkpoint.every_seconds} must be >= 0 "
        "(0: by steps only).",
    )
    distributed.check_config(c.distributed)
    _require(c.data.num_classes >= 2, "config.data.num_classes must be >= 2.")
    _require(
        c.optimizer.lr > 0 and 0 <= c.optimizer.min_lr <= c.optimizer.lr,
        "need 0 < config.optimizer.lr and 0 <= config.optimizer.min_lr <= lr.",
    )
    _require(
        0 <= c.optimizer.warmup_steps < c.total_steps,
        f"config.optimizer.warmup_steps={c.optimizer.warmup_steps} must be in "
        f"[0, total_steps={c.total_steps}).",
    )
    _require(c.optimizer.grad_clip_norm >= 0, "config.optimizer.grad_clip_norm must be >= 0.")
    _check_schedule(c)
    data_shards, space = mesh_shape(c, num_devices)
    _check_batch_divisibility(
        c,
        num_devices=data_shards,
        what="devices" if space == 1 else "data shards (devices / config.mesh.space)",
    )
    task.check_data(c)
    evaluators.check_config(
        c.evals, task.eval_inputs(c.data), num_devices=num_devices, num_processes=num_processes
    )


def _check_schedule(c) -> None:
    opt = c.optimizer
    _require(
        opt.schedule in SCHEDULES,
        f"config.optimizer.schedule={opt.schedule!r}; choose one of {SCHEDULES}.",
    )
    steps = tuple(opt.decay_steps)
    _require(
        all(isinstance(s, int) and 0 < s < c.total_steps for s in steps)
        and list(steps) == sorted(set(steps)),
        f"config.optimizer.decay_steps={steps} must be increasing integers in (0, "
        f"total_steps={c.total_steps}).",
    )
    _require(
        opt.schedule == "step" or not steps,
        "config.optimizer.decay_steps is read by schedule='step' only; set "
        "--config.optimizer.schedule=step or leave decay_steps empty.",
    )
    _require(0 < opt.decay_factor <= 1, "config.optimizer.decay_factor must be in (0, 1].")
    _require(
        all(isinstance(p, str) and p for p in opt.frozen),
        f"config.optimizer.frozen={tuple(opt.frozen)!r} must be non-empty path prefixes, "
        "e.g. ('backbone/conv1', 'backbone/bn1', 'backbone/layer1_').",
    )


def mesh_shape(c, num_devices: int) -> tuple[int, int]:
    """(data, space) of `config.mesh` on `num_devices` devices (-1 resolved); ValueError for a
    mesh that does not tile the devices, or space > 1 with pmap."""
    data, space = int(c.mesh.data), int(c.mesh.space)
    _require(
        space >= 1 and num_devices % space == 0,
        f"config.mesh.space={space} must be >= 1 and divide the {num_devices} devices.",
    )
    _require(
        data == -1 or data * space == num_devices,
        f"config.mesh.data={data} x config.mesh.space={space} must equal the "
        f"{num_devices} devices; set config.mesh.data=-1 to use the rest.",
    )
    _require(
        space == 1 or c.parallelism == "jit",
        f"config.mesh.space={space}: spatial sharding needs the jit driver; set "
        "--config.parallelism=jit (pmap shards the batch only) or config.mesh.space=1.",
    )
    return num_devices // space, space


def _check_batch_divisibility(c, *, num_devices: int, what: str = "devices") -> None:
    micro = c.batch_size // c.grad_accum_steps
    _require(
        c.batch_size % c.grad_accum_steps == 0,
        f"config.batch_size={c.batch_size} is not divisible by "
        f"config.grad_accum_steps={c.grad_accum_steps}.",
    )
    _require(
        micro % num_devices == 0,
        f"the micro-batch batch_size/grad_accum_steps={micro} must be divisible by the "
        f"{num_devices} {what}; change config.batch_size or config.grad_accum_steps.",
    )
