"""Command line: evaluate a checkpoint with the evaluators of its config (`config.evals`), the
same ones, on the same predict function and eval step, as the trainer's final evaluation.

    python -m dnl_jax.cli.evaluate --config experiments/configs/NAME.py \\
        --checkpoint runs/NAME/checkpoints/STEP [--split val] [--output_dir preds/] \\
        [--config.KEY=VALUE ...] [--config.model.kwargs.NAME=VALUE ...]

Works for every dataset the trainer trains on: the synthetic scenes (split 'val', the trainer's
val scenes), the prepared segmentation datasets (per image; the IoU table is printed, and with
--output_dir one prediction PNG per image in the benchmark's ids) and the video datasets. The
checkpoint is checked against the config's model (names and shapes of every parameter) before
anything runs. Prints one line per evaluator (and metrics_SPLIT.json with --output_dir); a bad
input is one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax import evaluators, tasks
from dnl_jax.evaluators.segmentation import format_iou_table
from dnl_jax.train import parallel
from dnl_jax.train import step as step_lib
from dnl_jax.train.checkpoint_paths import step_directory
from dnl_jax.train.checkpoint_reading import load_checked_variables
from dnl_jax.train.config import check_known_keys, validate_config


def evaluate_checkpoint(
    config,
    checkpoint: str,
    split: str = "val",
    *,
    output_dir: str | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, dict]:
    """Runs every evaluator of `config.evals` on checkpoint step `checkpoint` over `split` and
    returns {evaluator name: metrics}; logs one line per evaluator and, for per-class results,
    the IoU table. Raises ValueError for a bad config, checkpoint or split."""
    check_known_keys(config)  # before `build` reads config.model and config.data
    built = tasks.build(config)  # the one build of the model (host: no pmap axis)
    validate_config(
        config, built.task, num_devices=jax.device_count(), num_processes=jax.process_count()
    )
    path = step_directory(checkpoint)
    variables = load_checked_variables(config, built, path)
    bundle = built.bundle
    source = built.task.eval_source(config.data, split)
    driver = parallel.make_driver(
        "jit", None, step_lib.make_eval_step(bundle), space=int(config.mesh.space)
    )
    context = evaluators.EvalContext(
        bundle, built.module, source, driver, built.task.eval_inputs(config.data), output_dir
    )
    state = step_lib.TrainState(
        step=np.int32(0),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=None,
        rng=None,
    )
    results = {}
    with driver.context():
        state = driver.from_checkpoint(jax.tree.map(jnp.asarray, state))
        for evaluator in evaluators.from_config(config.evals, context):
            results[evaluator.name] = evaluator.run(state)
            metrics = results[evaluator.name]
            if "per_class_iou" in metrics:
                names = getattr(source, "classes", None) or [
                    f"class {k}" for k in range(len(metrics["per_class_iou"]))
                ]
                log(format_iou_table(metrics, names))
            log(f"{evaluator.name} ({split}): {evaluator.describe(metrics)}")
    return results


def _write_metrics(results: dict, output_dir: str, split: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"metrics_{split}.json")
    as_json = {
        name: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}
        for name, metrics in results.items()
    }
    with open(path, "w") as f:
        json.dump(as_json, f, indent=1)
    return path


def main(argv) -> None:
    from absl import app, flags

    from dnl_jax.cli.flags import set_model_kwargs
    from dnl_jax.cli.output import quiet_absl_command

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_absl_command(flags.FLAGS["verbosity"])  # the metrics, not the libraries' lines

    config, split, output_dir = _CONFIG.value, flags.FLAGS.split, flags.FLAGS.output_dir
    try:
        set_model_kwargs(config, _MODEL_KWARGS)
        results = evaluate_checkpoint(config, flags.FLAGS.checkpoint, split, output_dir=output_dir)
    except (ValueError, FloatingPointError) as error:  # FloatingPointError: NaN/inf outputs
        sys.exit(f"evaluate: {error}")
    if output_dir:
        print(f"wrote {_write_metrics(results, output_dir, split)}")


_MODEL_KWARGS: dict = {}

if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from dnl_jax.cli.flags import take_model_kwargs_flags
    from dnl_jax.cli.output import exit_on_bad_config_file

    exit_on_bad_config_file("evaluate")
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    flags.DEFINE_string(
        "checkpoint", None, "Checkpoint step directory, e.g. runs/demo-latest/checkpoints/1000."
    )
    flags.DEFINE_string("split", "val", "Split of config.data to evaluate.")
    flags.DEFINE_string("output_dir", None, "Writes prediction PNGs and metrics_SPLIT.json here.")
    flags.mark_flags_as_required(["config", "checkpoint"])
    _MODEL_KWARGS.update(take_model_kwargs_flags("evaluate"))
    app.run(main)
