"""`train_and_evaluate(config, workdir)`: the whole training run, top to bottom.

Sections: the config resolved once (`tasks.build`: task, model) and checked → the run's set-up
(train/setup.py: optimizer, driver (jit mesh or pmap), input pipeline, evaluators) →
state (fresh, resumed from the workdir's checkpoint, initialised from `config.init_from`, or
with the ImageNet backbone of `config.model.pretrained`, see train/initialisation.py) →
loop (step, log, evaluate, checkpoint, preemption) → final evaluation, checkpoint and figure.
One trainer for every task: the model bundle ('segmentation' on images, 'video' on
video clips) brings the loss, the metric counts, their finalisation and the metric that ranks
checkpoints (`bundle.best_metric`); the data pipeline picks the input shape and augmentation;
the evaluators of `config.evals` (dnl_jax/evaluators/) run the evaluation protocols. The
trainer loops over them and never branches on the task.
Rerunning the same command on the same workdir resumes exactly where the last complete
checkpoint left off (state, RNG and data position), so the result equals an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnl_jax import evaluators, tasks
from dnl_jax.inference.record import record_from_config, write_record
from dnl_jax.models.registry import parameter_mismatch
from dnl_jax.train import checkpoint as ckpt
from dnl_jax.train import initialisation, logs, parallel, preemption, resume_check, shutdown
from dnl_jax.train import step as step_lib
from dnl_jax.train.config import check_known_keys, validate_config
from dnl_jax.train.setup import Run, axis_name_of, build_run

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ state
def _initial_state(run: Run) -> tuple[Any, dict]:
    """Fresh, resumed (workdir has a checkpoint) or initialised from config.init_from."""
    abstract = jax.eval_shape(run.init_fn)
    signature = ckpt.model_signature(
        run.config.model.name, run.config.data.num_classes, abstract.params
    )
    # Checked before anything is compiled or written; unrestorable newer steps are set aside.
    resumed = run.checkpointer.restore_latest(
        run.driver.restore_target(abstract), run.iterator, signature
    )
    if resumed is not None:
        latest, restored = resumed
        log.info("resumed from %s at step %d", run.checkpointer.directory, latest)
        return run.driver.from_checkpoint(restored), signature
    state = run.driver.init_state(run.init_fn)
    if run.config.init_from:
        variables = ckpt.load_variables(run.config.init_from)
        _check_same_shapes(variables["params"], abstract.params, run.config.init_from)
        host_state = run.driver.host_state(state).replace(
            params=variables["params"], batch_stats=variables["batch_stats"]
        )
        state = run.driver.from_checkpoint(jax.tree.map(jnp.asarray, host_state))
    elif run.config.model.pretrained:
        host_state = run.driver.host_state(state)
        params, batch_stats = initialisation.load_into(
            run.config.model,
            jax.tree.map(np.asarray, host_state.params),
            jax.tree.map(np.asarray, host_state.batch_stats),
            ckpt.load_variables,
        )
        state = run.driver.from_checkpoint(
            jax.tree.map(jnp.asarray, host_state.replace(params=params, batch_stats=batch_stats))
        )
    return state, signature


def _check_same_shapes(loaded, expected, source: str) -> None:
    mismatch = parameter_mismatch(loaded, expected)
    if mismatch:
        raise ValueError(
            f"config.init_from={source!r} has parameters of other names or shapes "
            f"than the configured model ({mismatch}); convert them for this model "
            "first."
        )


# -------------------------------------------------------------------------------- evaluation
def evaluate(run: Run, state, step: int, *, final: bool, write: bool = True) -> dict:
    """{evaluator name: metrics} of the evaluators due after `step` (all of them when `final`),
    each written to the logs under its name."""
    results = {}
    for evaluator in run.evaluators:
        if evaluator.due(step, final=final):
            try:
                results[evaluator.name] = evaluator.run(state)
            except evaluators.NonFiniteOutputs as error:
                raise FloatingPointError(
                    f"evaluation {evaluator.name!r} of the weights after step {step} "
                    f"(checkpoint step {step} if saved; newest on disk: "
                    f"{run.checkpointer.latest_step()} in {run.checkpointer.directory}): "
                    f"{error}"
                ) from None
            if write:
                run.writer.write(step, evaluator.name, results[evaluator.name])
    return results


def _merged(results: dict) -> dict:
    """One dict of every evaluator's metrics (the ranking evaluator's first)."""
    ordered = sorted(results, key=lambda name: name != evaluators.RANKING_EVAL)
    return {key: value for name in ordered for key, value in results[name].items()}


# -------------------------------------------------------------------------------------- loop
def _say(bar, message: str) -> None:
    if jax.process_index() == 0:
        bar.write(message)


def _save(run: Run, step: int, state, signature: dict, *, metric, force: bool) -> int | None:
    """Checkpoints `state` (moved to its saved layout only now: pmap copies it to the host);
    `metric`: the val value that ranks checkpoints (None when not evaluated at `step`)."""
    saved = run.checkpointer.save(
        step, run.driver.to_checkpoint(state), run.iterator, signature, metric=metric, force=force
    )
    return step if saved else None


def _log_train_step(run: Run, bar, step: int, metrics: dict, seconds: float) -> None:
    """Throughput (images/s or clips/s), the progress bar (loss, lr, throughput, ETA) and
    every config.log_every_steps the train metrics."""
    unit = run.bundle.example_unit
    metrics[f"{unit}s_per_s"] = run.config.batch_size / max(seconds, 1e-9)
    bar.update(1)
    logs.describe_progress(
        bar, loss=metrics["loss"], lr=metrics["lr"], per_s=metrics[f"{unit}s_per_s"], unit=unit
    )
    if step % run.config.log_every_steps == 0 or step == run.config.total_steps:
        run.writer.write(step, "train", metrics)


def _stop(run: Run, bar, step: int, state, signature: dict, *, saved: bool, during: str):
    """The preemption stop: one checkpoint at the agreed `step` (unless one exists), a line."""
    if not saved:
        _save(run, step, state, signature, metric=None, force=True)
    if during == "evaluation":
        preemption.mark_interrupted_evaluation(run.writer.workdir, step)
    _say(
        bar,
        f"{run.watcher.reason} during {during}: checkpoint at step {step} in "
        f"{run.checkpointer.directory}; stopped cleanly. Rerun the same command to "
        "resume.",
    )


def _redo_interrupted_evaluation(run: Run, state, start: int) -> dict | None:
    """The evaluation a preemption interrupted after step `start`, rerun (None if none)."""
    step = preemption.interrupted_evaluation(run.writer.workdir)
    if step is None:
        return None
    results = (
        evaluate(run, state, start, final=start == run.config.total_steps)
        if step == start
        else None
    )
    preemption.clear_interrupted_evaluation(run.writer.workdir)
    return results


def _train_loop(run: Run, state, signature: dict, on_step: Callable | None) -> tuple:
    """Steps from the state's step to config.total_steps; returns (state, status, results):
    results = {evaluator name: metrics} of the last evaluation (None if none ran).

    Preemption (`run.watcher`, preemption.py) is checked after the restore, between evaluation
    batches and after every step; on every host at the same check, it saves one checkpoint at
    the current step (none when nothing changed since the restore) and stops."""
    config = run.config
    start = int(run.driver.host_state(state).step)
    bar = logs.progress_bar(
        total=config.total_steps,
        initial=start,
        enabled=config.progress_bar and jax.process_index() == 0,
    )
    try:
        if run.watcher.check():  # SIGTERM during start-up: the state is the one on disk
            _say(
                bar,
                f"{run.watcher.reason} before training resumed at step {start}; nothing "
                "new to save, stopped cleanly. Rerun the same command to resume.",
            )
            return state, run.watcher.status, None
        try:
            results = _redo_interrupted_evaluation(run, state, start)
            if start == 0:
                results = evaluate(run, state, 0, final=False)
        except preemption.Preempted:
            _say(
                bar,
                f"{run.watcher.reason} during the evaluation before training; nothing new "
                "to save, stopped cleanly. Rerun the same command to resume.",
            )
            return state, run.watcher.status, None
        return _steps(run, bar, state, signature, on_step, start, results)
    finally:
        bar.close()


def _steps(
    run: Run, bar, state, signature: dict, on_step: Callable | None, start: int, results
) -> tuple:
    """The loop of `_train_loop` from `start`."""
    config, warned_labels, tick = run.config, False, time.perf_counter()
    for step in range(start + 1, config.total_steps + 1):
        state, metrics = run.driver.train_step(state, next(run.iterator))
        metrics = {k: float(v) for k, v in parallel.fetch_replicated(metrics).items()}
        if not metrics.pop("finite"):  # loss, gradients, new parameters or statistics
            raise FloatingPointError(
                f"non-finite training step at step {step} (loss {metrics['loss']}, gradient "
                f"norm {metrics['grad_norm']}); stopped without saving it. Last good "
                f"checkpoint: step {run.checkpointer.latest_step()} in "
                f"{run.checkpointer.directory}. Lower config.optimizer.lr or set "
                "config.optimizer.grad_clip_norm."
            )
        warned_labels = step_lib.warn_out_of_range_labels(metrics, step, warned_labels)
        now = time.perf_counter()
        _log_train_step(run, bar, step, metrics, now - tick)
        tick = now
        final = step == config.total_steps
        try:
            evaluated = evaluate(run, state, step, final=final)
        except preemption.Preempted:
            _stop(run, bar, step, state, signature, saved=False, during="evaluation")
            return state, run.watcher.status, results
        # The checkpoint-ranking val metric, where evaluated.
        best = evaluated.get(evaluators.RANKING_EVAL, {}).get(run.bundle.best_metric)
        if evaluated:
            results = evaluated
            _say(bar, f"step {step}: {evaluators.describe(run.evaluators, evaluated)}")
        saved = False
        if final or run.checkpointer.should_save(step):
            saved = _save(run, step, state, signature, metric=best, force=True) is not None
        if on_step is not None:
            on_step(step)
        if not final and run.watcher.check():
            _stop(run, bar, step, state, signature, saved=saved, during="training")
            return state, run.watcher.status, results
    return state, "completed", results


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    on_step: Callable[[int], None] | None = None,
    allow_config_change: bool = False,
) -> dict:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint) and evaluates.

    Args:
      config: built from `dnl_jax.train.config.base_config()`; validated here.
      workdir: where checkpoints, logs, the config and figures go.
      on_step: optional callback after each completed step (checkpoint included), given the
        step number; for tools and tests (e.g. to deliver SIGTERM at a chosen step).
      allow_config_change: resume even when the config changes the training trajectory
        (resume_check.py; the change is recorded in config.json's history).
    Returns:
      {'status': 'completed'|'preempted' (SIGTERM)|'interrupted' (Ctrl-C), 'step',
       'val': the last evaluation's metrics, all evaluators' merged into one dict (or None),
       'evals': the same per evaluator name, 'summary': their console line (or None),
       'state': the final TrainState (host numpy), 'workdir',
       'curves': PNG path or None, 'attention': the attention figure's PNG path, or None (off,
       no DNL block, or a video model)}.
    """
    check_known_keys(config)  # before `build` reads config.model and config.data
    built = tasks.build(config, axis_name=axis_name_of(config))  # the one build of the model
    validate_config(
        config, built.task, num_devices=jax.device_count(), num_processes=jax.process_count()
    )
    workdir = os.path.abspath(workdir)
    watcher = preemption.PreemptionWatcher()  # before restore and compile
    try:
        return _train_and_evaluate(config, built, workdir, watcher, on_step, allow_config_change)
    finally:
        watcher.close()


def _train_and_evaluate(
    config, built: tasks.Built, workdir: str, watcher, on_step, allow_config_change
) -> dict:
    run = build_run(config, built, workdir, watcher)
    failing = True
    try:
        with run.driver.context():
            state, signature = _initial_state(run)
            start = int(run.driver.host_state(state).step)
            recorded = json.loads(tasks.applicable(config, built.task).to_json_best_effort())
            changes = resume_check.check_resume(  # after the model check, before any write
                workdir, recorded, resuming=start > 0, allow=allow_config_change
            )
            run.writer.forget_after(  # what the stopped run logged past its checkpoint
                start if start > 0 else -1,
                evaluations_at_step=preemption.interrupted_evaluation(workdir) == start,
            )
            run.writer.write_config(resume_check.with_history(workdir, recorded, changes, start))
            if run.writer.active:  # what predict needs to preprocess inputs (docs/predict.md)
                write_record(workdir, record_from_config(config, built.task))
            state, status, results = _train_loop(run, state, signature, on_step)
            host_state = run.driver.host_state(state)
            if status == "completed" and results is None:  # resumed after the last step
                results = evaluate(run, state, int(host_state.step), final=True, write=False)
        failing = False
    finally:  # every fatal path too: nothing of these may print after the message
        shutdown.close_all(
            [
                ("the checkpoint manager", run.checkpointer.close),
                ("the data iterator", getattr(run.iterator, "close", lambda: None)),
                ("the metric writer", run.writer.close),
            ],
            failing=failing,
        )
    figures = _figures(run, host_state, status) if jax.process_index() == 0 else {}
    return {
        "status": status,
        "step": int(host_state.step),
        "val": _merged(results) if results else None,
        "evals": results,
        "summary": evaluators.describe(run.evaluators, results) if results else None,
        "state": host_state,
        "workdir": workdir,
        "curves": figures.get("curves"),
        "attention": figures.get("attention"),
    }


def _figures(run: Run, host_state, status: str) -> dict:
    """{'curves', 'attention': PNG path or None}: the training curves (loss and the bundle's val
    metric), and for a completed run the task's figure (`Task.save_figure`: segmentation
    attention maps, detections with the backbone block's attention; video models have none)."""
    config, bundle = run.config, run.bundle
    figures = {"curves": None, "attention": None}
    if config.curves_figure:
        figures["curves"] = logs.save_curves_figure(
            run.writer.workdir,
            title=f"{config.model.name} on {config.data.name}",
            val_metric=bundle.best_metric,
            val_label=bundle.metric_label,
        )
    if config.attention_figure and status == "completed":
        figures["attention"] = run.built.task.save_figure(
            run.writer.workdir,
            bundle,
            run.built.module,
            {"params": host_state.params, "batch_stats": host_state.batch_stats},
            run.val_source,
            config.data,
        )
    return figures
