"""`train_and_evaluate(config, workdir)`: the whole training run, top to bottom.

Sections: config check → model and optimizer → driver (jit mesh or pmap) → input pipeline →
state (fresh, resumed from the workdir's checkpoint, or initialised from `config.init_from`) →
loop (step, log, evaluate, checkpoint, preemption) → final evaluation, checkpoint and figure.
One trainer for both tasks: the model bundle's task ('segmentation' on images, 'classification'
on video clips) picks the input shape, the augmentation, the val metrics and the metric that
ranks checkpoints (`metrics.BEST_METRIC`); the steps and drivers are the same.
Rerunning the same command on the same workdir resumes exactly where the last complete
checkpoint left off (state, RNG and data position), so the result equals an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnl_jax.data import pipeline
from dnl_jax.models import get_model
from dnl_jax.train import checkpoint as ckpt
from dnl_jax.train import logs, parallel, step as step_lib
from dnl_jax.train import metrics as metrics_lib
from dnl_jax.train.config import dataset_task, validate_config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """What the loop needs, built once by `_build`."""

    config: ml_collections.ConfigDict
    bundle: Any
    driver: Any
    schedule: Callable
    init_fn: Callable
    train_source: Any
    val_source: Any
    iterator: Any
    checkpointer: ckpt.Checkpointer
    writer: logs.MetricWriter


# ---------------------------------------------------------------- model, optimizer, driver, data
def make_bundle(config: ml_collections.ConfigDict, *, for_init: bool = False):
    """The model bundle for `config.model`, with the batch-norm axis the driver needs (none for
    initialisation, which runs outside pmap). Raises ValueError when the model's task is not
    the dataset's (a segmentation model on videos, or the reverse)."""
    kwargs = config.model.kwargs.to_dict()
    if config.model.dtype == "bfloat16":
        kwargs["dtype"] = jnp.bfloat16
    if config.parallelism == "pmap" and not for_init:
        kwargs["axis_name"] = parallel.PMAP_AXIS
    bundle = get_model(config.model.name, config.data.num_classes, **kwargs)
    task = dataset_task(config.data.name)
    if bundle.task != task:
        example = "dnl_i3d_r50" if task == "classification" else "dnl_r50-d8"
        raise ValueError(f"config.model.name={config.model.name!r} is a {bundle.task} model but "
                         f"config.data.name={config.data.name!r} is a {task} dataset; choose a "
                         f"{task} model, e.g. --config.model.name={example}.")
    return bundle


def make_init_fn(optimizer, config: ml_collections.ConfigDict) -> Callable:
    """() → fresh TrainState, deterministic from config.seed.

    Initialised in training mode so that training-only parts (the auxiliary head) get their
    parameters too; flax's batch norm leaves its running statistics untouched while initialising.
    """
    bundle = make_bundle(config, for_init=True)
    module, shape = bundle.module, pipeline.example_shape(config.data, bundle.task)

    def init_fn():
        # Parameters are drawn with XLA's RngBitGenerator ('unsafe_rbg'): deterministic for a
        # seed and backend, and the initialiser compiles several times faster than with
        # threefry on CPU. Training randomness (dropout) stays threefry, which is invariant to
        # how the batch is sharded.
        params_key, dropout_key = jax.random.split(
            jax.random.key(config.seed, impl="unsafe_rbg"))
        train_key = jax.random.fold_in(jax.random.key(config.seed), 1)
        variables = module.init({"params": params_key, "dropout": dropout_key},
                                jnp.zeros((2, *shape), jnp.float32), train=True)
        params = variables["params"]
        return step_lib.TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=variables.get("batch_stats", {}), opt_state=optimizer.init(params),
            rng=jax.random.key_data(train_key))

    return init_fn


def _build(config: ml_collections.ConfigDict, workdir: str) -> Run:
    bundle = make_bundle(config)
    schedule = step_lib.learning_rate_schedule(config.optimizer, config.total_steps)
    optimizer = step_lib.make_optimizer(config.optimizer, config.total_steps)
    axis_name = parallel.PMAP_AXIS if config.parallelism == "pmap" else None
    train_step = step_lib.make_train_step(bundle, optimizer, schedule,
                                          grad_accum_steps=config.grad_accum_steps,
                                          axis_name=axis_name)
    eval_step = step_lib.make_eval_step(bundle, axis_name=axis_name)
    driver = parallel.make_driver(config.parallelism, train_step, eval_step)
    train_source, val_source = pipeline.make_sources(config.data)
    dataset = pipeline.train_dataset(
        train_source, seed=config.data.seed, local_batch=config.batch_size // jax.process_count(),
        process_index=jax.process_index(), process_count=jax.process_count(),
        transform=pipeline.train_transform(config.data, bundle.task),
        **pipeline.worker_settings(config.data))
    checkpointer = ckpt.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     every_steps=config.checkpoint.every_steps,
                                     keep=config.checkpoint.keep,
                                     keep_best=config.checkpoint.keep_best,
                                     best_metric="val_" + metrics_lib.BEST_METRIC[bundle.task])
    return Run(config, bundle, driver, schedule, make_init_fn(optimizer, config),
               train_source, val_source, iter(dataset), checkpointer, logs.MetricWriter(workdir))


# ------------------------------------------------------------------------------------ state
def _initial_state(run: Run) -> tuple[Any, dict]:
    """Fresh, resumed (workdir has a checkpoint) or initialised from config.init_from."""
    abstract = jax.eval_shape(run.init_fn)
    signature = ckpt.model_signature(run.config.model.name, run.config.data.num_classes,
                                     abstract.params)
    latest = run.checkpointer.latest_step()
    if latest is not None:  # checked before anything is compiled or written
        run.checkpointer.check_signature(latest, signature)
        restored = run.checkpointer.restore(latest, run.driver.restore_target(abstract),
                                            run.iterator)
        log.info("resumed from %s at step %d", run.checkpointer.directory, latest)
        return run.driver.from_checkpoint(restored), signature
    state = run.driver.init_state(run.init_fn)
    if run.config.init_from:
        variables = ckpt.load_variables(run.config.init_from)
        _check_same_shapes(variables["params"], abstract.params, run.config.init_from)
        host_state = run.driver.to_checkpoint(state).replace(
            params=variables["params"], batch_stats=variables["batch_stats"])
        state = run.driver.from_checkpoint(jax.tree.map(jnp.asarray, host_state))
    return state, signature


def _check_same_shapes(loaded, expected, source: str) -> None:
    loaded_shapes = jax.tree.map(np.shape, loaded)
    expected_shapes = jax.tree.map(lambda a: tuple(a.shape), expected)
    if loaded_shapes != expected_shapes:
        raise ValueError(f"config.init_from={source!r} has parameters of other names or shapes "
                         "than the configured model; convert them for this model first.")


# -------------------------------------------------------------------------------- evaluation
def evaluate(run: Run, state) -> dict:
    """Periodic evaluation of the val split, summed over devices and hosts.

    Segmentation: mIoU, per-class IoU, accuracies; synthetic scenes in whole fixed-size
    batches, prepared datasets (images of different sizes) per image (`_evaluate_per_image`).
    Classification: top-1 'accuracy' (+ 'correct', 'count') of one view per video (the middle
    clip, centre crop), batched through the driver's eval step like the synthetic scenes.
    """
    task = run.bundle.task
    if task == "segmentation" and run.config.data.name != "synthetic":
        return _evaluate_per_image(run, state)
    count, index = jax.process_count(), jax.process_index()
    totals = None
    for batch in pipeline.eval_batches(run.val_source,
                                       local_batch=run.config.eval_batch_size // count,
                                       process_index=index, process_count=count,
                                       preprocess=pipeline.eval_preprocess(run.config, task),
                                       pad_label=pipeline.PAD_LABELS[task]):
        sums = run.driver.eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return metrics_lib.metrics_from_sums(task, totals)


def _host_logits_fn(run: Run, state) -> Callable:
    """`inputs -> float32 logits` of `state`'s weights on one local device (jitted), for the
    per-example evaluations that `dnl_jax.evaluate` also runs. float32: the host-side averaging
    and softmax of bfloat16 would lose precision."""
    host = parallel.fetch_replicated(run.driver.to_checkpoint(state))
    variables = {"params": host.params, "batch_stats": host.batch_stats}
    module = make_bundle(run.config, for_init=True).module  # no pmap axis outside pmap
    logits_fn = jax.jit(lambda v, x: module.apply(v, x, train=False)["logits"].astype(
        jnp.float32))
    return lambda inputs: logits_fn(variables, inputs)


def _host_val_examples(run: Run):
    """This host's val examples: process_index::process_count."""
    count, index = jax.process_count(), jax.process_index()
    return (run.val_source[i] for i in range(index, len(run.val_source), count))


def _evaluate_per_image(run: Run, state) -> dict:
    """Each host evaluates its val images one at a time at their own size, as `python -m
    dnl_jax.evaluate` does (resize to data.base_size, then config.eval's whole/slide inference,
    scales and flip, scores resized back to the label); the hosts' confusion matrices are
    summed."""
    from dnl_jax import evaluate as evaluate_lib

    confusion = evaluate_lib.evaluate_segmentation(
        _host_logits_fn(run, state), _host_val_examples(run),
        num_classes=run.config.data.num_classes, base_size=tuple(run.config.data.base_size),
        **evaluate_lib.inference_settings(run.config))
    return metrics_lib.segmentation_metrics(parallel.sum_over_hosts(confusion))


def _evaluate_multi_view(run: Run, state) -> dict:
    """Video test protocol, as `python -m dnl_jax.evaluate`: eval.num_clips x eval.num_crops
    views per val video → {'clip_accuracy' (per view), 'video_accuracy' (views' mean softmax)},
    each host its share of the videos, counts summed over hosts."""
    from dnl_jax import evaluate as evaluate_lib

    counts = evaluate_lib.video_view_counts(_host_logits_fn(run, state), _host_val_examples(run),
                                            **pipeline.video_view_settings(run.config))
    return evaluate_lib.video_accuracies(parallel.sum_over_hosts(counts))


# -------------------------------------------------------------------------------------- loop
def _say(bar, message: str) -> None:
    if jax.process_index() == 0:
        bar.write(message)


def _save(run: Run, step: int, state, signature: dict, *, metric, force: bool) -> Optional[int]:
    """Checkpoints `state` (moved to its saved layout only now: pmap copies it to the host);
    `metric`: the val value that ranks checkpoints (None when not evaluated at `step`)."""
    saved = run.checkpointer.save(step, run.driver.to_checkpoint(state), run.iterator,
                                  signature, metric=metric, force=force)
    return step if saved else None


def _log_train_step(run: Run, bar, step: int, metrics: dict, seconds: float) -> None:
    """Throughput (images/s or clips/s), the progress bar (loss, lr, throughput, ETA) and
    every config.log_every_steps the train metrics."""
    unit = "clips" if run.bundle.task == "classification" else "images"
    metrics[f"{unit}_per_s"] = run.config.batch_size / max(seconds, 1e-9)
    bar.update(1)
    logs.describe_progress(bar, loss=metrics["loss"], lr=metrics["lr"],
                           per_s=metrics[f"{unit}_per_s"], unit=unit[:-1])
    if step % run.config.log_every_steps == 0 or step == run.config.total_steps:
        run.writer.write(step, "train", metrics)


def _train_loop(run: Run, state, signature: dict, on_step: Optional[Callable]) -> tuple:
    """Steps from the state's step to config.total_steps; returns (state, status, last_val)."""
    config, writer = run.config, run.writer
    start = int(parallel.fetch_replicated(run.driver.to_checkpoint(state).step))
    last_val, status, last_saved = None, "completed", None
    if start == 0:
        last_val = evaluate(run, state)
        writer.write(0, "val", last_val)
    watcher = ckpt.PreemptionWatcher()
    bar = logs.progress_bar(total=config.total_steps, initial=start,
                            enabled=config.progress_bar and jax.process_index() == 0)
    tick = time.perf_counter()
    try:
        for step in range(start + 1, config.total_steps + 1):
            state, metrics = run.driver.train_step(state, next(run.iterator))
            metrics = {k: float(v) for k, v in parallel.fetch_replicated(metrics).items()}
            if not np.isfinite(metrics["loss"]):
                raise FloatingPointError(
                    f"training loss is {metrics['loss']} at step {step}; stopped without saving "
                    f"it. Last good checkpoint: step {run.checkpointer.latest_step()} in "
                    f"{run.checkpointer.directory}. Lower config.optimizer.lr or set "
                    "config.optimizer.grad_clip_norm.")
            now = time.perf_counter()
            _log_train_step(run, bar, step, metrics, now - tick)
            tick = now
            best = None  # the checkpoint-ranking val metric, where evaluated
            if step % config.eval_every_steps == 0 or step == config.total_steps:
                last_val = evaluate(run, state)
                writer.write(step, "val", last_val)
                best = last_val[metrics_lib.BEST_METRIC[run.bundle.task]]
                _say(bar, f"step {step}: {metrics_lib.describe(last_val)}")
            final = step == config.total_steps
            if final or run.checkpointer.should_save(step):
                last_saved = _save(run, step, state, signature, metric=best, force=final)
            if on_step is not None:
                on_step(step)
            if not final and watcher.should_stop():
                if last_saved != step:
                    _save(run, step, state, signature, metric=best, force=True)
                status = "preempted"
                _say(bar, f"SIGTERM: saved a checkpoint at step {step} and stopped.")
                break
    finally:
        bar.close()
        watcher.close()
    return state, status, last_val


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint) and evaluates.

    Args:
      config: built from `dnl_jax.train.config.base_config()`; validated here.
      workdir: where checkpoints, logs, the config and figures go.
      on_step: optional callback after each completed step (checkpoint included), given the
        step number; for tools and tests (e.g. to deliver SIGTERM at a chosen step).
    Returns:
      {'status': 'completed'|'preempted', 'step', 'val': last val metrics (or None; video runs
       that complete add the multi-view 'clip_accuracy' and 'video_accuracy' when
       config.eval.multi_view), 'state': the final TrainState (host numpy), 'workdir',
       'curves': PNG path or None, 'attention': the attention figure's PNG path, or None (off,
       no DNL block, or a video model)}.
    """
    validate_config(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    workdir = os.path.abspath(workdir)
    run = _build(config, workdir)
    try:
        with run.driver.context():
            state, signature = _initial_state(run)
            run.writer.write_config(config)
            state, status, last_val = _train_loop(run, state, signature, on_step)
            host_state = parallel.fetch_replicated(run.driver.to_checkpoint(state))
            if status == "completed" and last_val is None:  # resumed after the last step
                last_val = evaluate(run, state)
            if status == "completed" and run.bundle.task == "classification" and \
                    config.eval.multi_view:
                multi_view = _evaluate_multi_view(run, state)
                run.writer.write(int(host_state.step), "val_multi_view", multi_view)
                last_val = {**last_val, **multi_view}
    finally:
        run.checkpointer.close()
        run.writer.close()
    figures = _figures(run, host_state, status) if jax.process_index() == 0 else {}
    return {"status": status, "step": int(host_state.step), "val": last_val,
            "state": host_state, "workdir": workdir, "curves": figures.get("curves"),
            "attention": figures.get("attention")}


def _figures(run: Run, host_state, status: str) -> dict:
    """{'curves', 'attention': PNG path or None}: the training curves (loss and the task's val
    metric), and for a completed segmentation run the attention figure (maps over pixels)."""
    config, task = run.config, run.bundle.task
    figures = {"curves": None, "attention": None}
    if config.curves_figure:
        metric = metrics_lib.BEST_METRIC[task]
        figures["curves"] = logs.save_curves_figure(
            run.writer.workdir, title=f"{config.model.name} on {config.data.name}",
            val_metric=metric, val_label=metrics_lib.METRIC_LABELS[metric])
    if config.attention_figure and status == "completed" and task == "segmentation":
        from dnl_jax import viz  # imported lazily: matplotlib

        figures["attention"] = viz.save_attention_figure(
            run.writer.workdir, make_bundle(config, for_init=True).module,
            {"params": host_state.params, "batch_stats": host_state.batch_stats},
            run.val_source, num_classes=config.data.num_classes,
            preprocess=pipeline.figure_preprocess(config.data))
    return figures
