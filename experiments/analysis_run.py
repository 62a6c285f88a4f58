"""One run of the analysis experiment (experiments/analysis_experiment.py), in a worker
process: `run_one` trains the demo recipe with the run's head, seed and scene family
(`run_config`), follows the learning-speed curve while it trains (`cue_tracker`, read back by
`read_cue_curve`), analyses the final checkpoint and saves the run's record (`record_path`).
The drawn scenes are drawn once per process (`CachedSource`).
"""

from __future__ import annotations

import json
import os
import time

import analysis_claims  # experiments/analysis_claims.py
from analysis_plan import HEADS, record_path  # experiments/analysis_plan.py


def run_config(spec: dict):
    """The ConfigDict of one run: the demo recipe with the run's head, seed, scenes, steps."""
    from dnl_jax.recipes.ablation import synthetic_config

    config = synthetic_config(HEADS[spec["head"]])
    config.seed = spec["seed"]
    config.data.synthetic.scenes = spec["scenes"]
    config.total_steps = spec["steps"]
    config.progress_bar = False
    config.curves_figure = False
    config.attention_figure = False
    if spec["smoke"]:
        (
            config.data.synthetic.num_train,
            config.data.synthetic.num_val,
            config.data.synthetic.image_size,
        ) = 64, 16, 32
        config.batch_size = config.evals.val.batch_size = 8
        config.optimizer.warmup_steps = 0
        config.evals.val.every_steps = spec["steps"]
    config.checkpoint.every_steps = spec["cue_every"]  # the cue curve reads every one back
    return config


def command_line(spec: dict) -> str:
    """The equivalent single-run commands (train, then analyse)."""
    config = f"experiments/configs/synthetic_{spec['head']}_tiny.py"
    workdir = f"runs/{spec['scenes']}/{spec['head']}_seed{spec['seed']}"
    overrides = (
        f"--config.seed={spec['seed']} --config.data.synthetic.scenes={spec['scenes']} "
        f"--config.total_steps={spec['steps']}"
    )
    return (
        f"python -m dnl_jax.cli.train --config {config} --workdir {workdir} {overrides}; "
        f"python -m dnl_jax.cli.analyze --config {config} {overrides} "
        f"--checkpoint {workdir}/checkpoints --num_images {spec['num_images']}"
    )


class CachedSource:
    """A random-access source that draws each index of `source` once and keeps it: the scenes
    are a pure function of (seed, split, index), so this changes no result, only the time (on a
    GPU host, drawing 16 scenes per step on the CPU would dominate the tiny model's step)."""

    def __init__(self, source):
        self.source, self.cache = source, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if index not in self.cache:
            self.cache[index] = self.source[index]
        return self.cache[index]

    def salient_map(self, index: int):
        return self.source.salient_map(index)


def _cache_scenes() -> None:
    """Makes the drawn scenes' `sources` (what the trainer, its evaluation and the analysis
    read) return `CachedSource`s (this process only)."""
    from dnl_jax.tasks.segmentation_inputs import DrawnScenes

    if getattr(DrawnScenes.sources, "cached", False):
        return
    make_sources = DrawnScenes.sources

    def cached_sources(self, data, dataset):
        return tuple(CachedSource(source) for source in make_sources(self, data, dataset))

    cached_sources.cached = True
    DrawnScenes.sources = cached_sources


def cue_tracker(config, spec: dict, workdir: str):
    """The `on_step` callback of the learning-speed curve: at every `cue_every`-th step, reads
    that step's checkpoint back, segments the first `cue_images` val scenes and appends
    {'step', 'cue_accuracy', 'objects', 'miou'} to WORKDIR/cue_curve.jsonl (kept on resume)."""
    import jax
    import numpy as np

    from dnl_jax import tasks
    from dnl_jax.analysis import saliency
    from dnl_jax.cli import analyze
    from dnl_jax.models.losses import confusion_matrix
    from dnl_jax.models.metrics import metrics_from_confusion
    from dnl_jax.train.checkpoint import load_variables

    built = tasks.build(config)
    bundle = built.bundle
    examples, _ = analyze.load_examples(config, built.task, "val", spec["cue_images"])
    images = np.stack([ex["image"] for ex in examples])
    labels = np.stack([ex["label"] for ex in examples])
    val_source = built.task.sources(config.data)[1]  # a CachedSource
    first_object_class = type(val_source.source).first_object_class
    segment = jax.jit(
        lambda variables: bundle.module.apply(variables, images, train=False)["logits"].argmax(-1)
    )
    path = os.path.join(workdir, "cue_curve.jsonl")

    def on_step(step: int) -> None:
        if step % spec["cue_every"]:
            return
        variables = load_variables(os.path.join(workdir, "checkpoints", str(step)))
        predicted = np.asarray(segment(variables))
        right, total = saliency.object_cue_accuracy(predicted, labels, first_object_class)
        confusion = np.asarray(confusion_matrix(predicted, labels, bundle.num_classes))
        with open(path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "cue_accuracy": right / max(total, 1),
                        "objects": total,
                        "miou": metrics_from_confusion(confusion)["miou"],
                    }
                )
                + "\n"
            )

    return on_step


def read_cue_curve(workdir: str) -> list[dict]:
    """The cue curve of a run, one entry per step (the last written wins after a resume)."""
    path = os.path.join(workdir, "cue_curve.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        entries = {e["step"]: e for e in (json.loads(line) for line in f if line.strip())}
    return [entries[step] for step in sorted(entries)]


def run_one(spec: dict) -> dict:
    """Trains and analyses one run (in a worker process); saves and returns its record."""
    import jax

    from dnl_jax import tasks
    from dnl_jax.analysis import saliency
    from dnl_jax.cli import analyze
    from dnl_jax.train import logs
    from dnl_jax.train.checkpoint import load_variables
    from dnl_jax.train.checkpoint_paths import step_directory
    from dnl_jax.train.trainer import train_and_evaluate

    _cache_scenes()
    config = run_config(spec)
    workdir = os.path.join(spec["runs_dir"], spec["scenes"], f"{spec['head']}_seed{spec['seed']}")
    start = time.perf_counter()
    result = train_and_evaluate(config, workdir, on_step=cue_tracker(config, spec, workdir))
    train_s = time.perf_counter() - start
    curve = read_cue_curve(workdir)
    val = [r for r in logs.read_metrics(workdir) if r["split"] == "val"]
    record = {
        **{k: spec[k] for k in ("scenes", "head", "seed", "steps")},
        "model": HEADS[spec["head"]],
        "val_miou": max(val, key=lambda r: r["step"])["miou"],
        "best_val_miou": max(r["miou"] for r in val),
        "val_miou_by_step": {r["step"]: r["miou"] for r in val},
        "cue_curve": curve,
        "cue_threshold": analysis_claims.CUE_THRESHOLD,
        "steps_to_learn": saliency.steps_to_learn(
            {e["step"]: e["cue_accuracy"] for e in curve}, analysis_claims.CUE_THRESHOLD
        ),
        "train_wall_s": round(train_s, 1),
        "command": command_line(spec),
        "recipe": {
            "image_size": config.data.synthetic.image_size,
            "num_classes": config.data.num_classes,
            "num_train": config.data.synthetic.num_train,
            "num_val": config.data.synthetic.num_val,
            "batch_size": config.batch_size,
            "total_steps": config.total_steps,
            "lr": config.optimizer.lr,
        },
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
    }
    built = tasks.build(config)
    bundle = built.bundle
    variables = load_variables(step_directory(os.path.join(workdir, "checkpoints")))
    examples, _ = analyze.load_examples(config, built.task, "val", spec["num_images"])
    start = time.perf_counter()
    analysed = analyze.analyze_model(
        bundle.module,
        variables,
        examples,
        num_classes=bundle.num_classes,
        figure_images=1 if spec["seed"] == spec["first_seed"] else 0,
    )
    record.update(
        analysis_wall_s=round(time.perf_counter() - start, 1),
        analysis=analysed["blocks"],
        analysed_images=analysed["num_images"],
        analysed_miou=analysed["miou"],
        figure_rows=analysed["figure_rows"],
        status=result["status"],
    )
    os.makedirs(os.path.dirname(record_path(spec)), exist_ok=True)
    with open(record_path(spec) + ".tmp", "w") as f:
        json.dump(record, f, cls=_NumpyEncoder)
    os.replace(record_path(spec) + ".tmp", record_path(spec))
    return record


class _NumpyEncoder(json.JSONEncoder):
    """numpy arrays and scalars (the figure's maps) as lists and numbers."""

    def default(self, o):
        import numpy as np

        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        return super().default(o)


__all__ = ["run_config", "command_line", "CachedSource", "cue_tracker", "read_cue_curve", "run_one"]
