"""`train_and_evaluate(config, workdir)`: the whole training run, top to bottom.

Sections: config check → model and optimizer → driver (jit mesh or pmap) → input pipeline →
state (fresh, resumed from the workdir's checkpoint, or initialised from `config.init_from`) →
loop (step, log, evaluate, checkpoint, preemption) → final evaluation, checkpoint and figure.
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
from dnl_jax.train.config import validate_config
from dnl_jax.train.metrics import segmentation_metrics

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
    initialisation, which runs outside pmap)."""
    kwargs = config.model.kwargs.to_dict()
    if config.model.dtype == "bfloat16":
        kwargs["dtype"] = jnp.bfloat16
    if config.parallelism == "pmap" and not for_init:
        kwargs["axis_name"] = parallel.PMAP_AXIS
    bundle = get_model(config.model.name, config.data.num_classes, **kwargs)
    if bundle.task != "segmentation":
        raise ValueError(f"config.model.name={config.model.name!r} is a {bundle.task} model; "
                         "this trainer's datasets are segmentation datasets.")
    return bundle


def make_init_fn(optimizer, config: ml_collections.ConfigDict) -> Callable:
    """() → fresh TrainState, deterministic from config.seed.

    Initialised in training mode so that training-only parts (the auxiliary head) get their
    parameters too; flax's batch norm leaves its running statistics untouched while initialising.
    """
    module = make_bundle(config, for_init=True).module
    height, width = pipeline.train_image_size(config.data)

    def init_fn():
        # Parameters are drawn with XLA's RngBitGenerator ('unsafe_rbg'): deterministic for a
        # seed and backend, and the initialiser compiles several times faster than with
        # threefry on CPU. Training randomness (dropout) stays threefry, which is invariant to
        # how the batch is sharded.
        params_key, dropout_key = jax.random.split(
            jax.random.key(config.seed, impl="unsafe_rbg"))
        train_key = jax.random.fold_in(jax.random.key(config.seed), 1)
        variables = module.init({"params": params_key, "dropout": dropout_key},
                                jnp.zeros((2, height, width, 3), jnp.float32), train=True)
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
        transform=pipeline.train_transform(config.data))
    checkpointer = ckpt.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     every_steps=config.checkpoint.every_steps,
                                     keep=config.checkpoint.keep,
                                     keep_best=config.checkpoint.keep_best)
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
    """Evaluation of the val split: mIoU, per-class IoU, accuracies.

    Synthetic: whole fixed-size batches through the driver's eval step. Prepared datasets
    (images of different sizes): `_evaluate_per_image`.
    """
    if run.config.data.name != "synthetic":
        return _evaluate_per_image(run, state)
    count, index = jax.process_count(), jax.process_index()
    totals = None
    for batch in pipeline.eval_batches(run.val_source,
                                       local_batch=run.config.eval_batch_size // count,
                                       process_index=index, process_count=count):
        sums = run.driver.eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return segmentation_metrics(totals["confusion"])


def _evaluate_per_image(run: Run, state) -> dict:
    """Each host takes val images process_index::process_count and evaluates them one at a time
    at their own size, as `python -m dnl_jax.evaluate` does (resize to data.base_size, then
    config.eval's whole/slide inference, scales and flip, scores resized back to the label); the
    hosts' confusion matrices are summed. Inference runs on one local device per host."""
    from dnl_jax import evaluate as evaluate_lib

    host = parallel.fetch_replicated(run.driver.to_checkpoint(state))
    variables = {"params": host.params, "batch_stats": host.batch_stats}
    module = make_bundle(run.config, for_init=True).module  # no pmap axis outside pmap
    # float32 logits: the host-side averaging and softmax of bfloat16 would lose precision.
    logits_fn = jax.jit(lambda v, x: module.apply(v, x, train=False)["logits"].astype(
        jnp.float32))
    count, index = jax.process_count(), jax.process_index()
    examples = (run.val_source[i] for i in range(index, len(run.val_source), count))
    confusion = evaluate_lib.evaluate_segmentation(
        lambda images: logits_fn(variables, images), examples,
        num_classes=run.config.data.num_classes, base_size=tuple(run.config.data.base_size),
        **evaluate_lib.inference_settings(run.config))
    if count > 1:
        from jax.experimental import multihost_utils

        confusion = np.asarray(multihost_utils.process_allgather(confusion)).sum(0)
    return segmentation_metrics(confusion)


# -------------------------------------------------------------------------------------- loop
def _say(bar, message: str) -> None:
    if jax.process_index() == 0:
        bar.write(message)


def _save(run: Run, step: int, state, signature: dict, *, miou, force: bool) -> Optional[int]:
    """Checkpoints `state` (moved to its saved layout only now: pmap copies it to the host)."""
    saved = run.checkpointer.save(step, run.driver.to_checkpoint(state), run.iterator,
                                  signature, miou=miou, force=force)
    return step if saved else None


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
            metrics["images_per_s"] = config.batch_size / max(now - tick, 1e-9)
            tick = now
            bar.update(1)
            logs.describe_progress(bar, loss=metrics["loss"], lr=metrics["lr"],
                                   images_per_s=metrics["images_per_s"])
            if step % config.log_every_steps == 0 or step == config.total_steps:
                writer.write(step, "train", metrics)
            miou = None
            if step % config.eval_every_steps == 0 or step == config.total_steps:
                last_val = evaluate(run, state)
                writer.write(step, "val", last_val)
                miou = last_val["miou"]
                _say(bar, f"step {step}: val mIoU {miou:.4f}, pixel acc "
                          f"{last_val['pixel_accuracy']:.4f}")
            final = step == config.total_steps
            if final or run.checkpointer.should_save(step):
                last_saved = _save(run, step, state, signature, miou=miou, force=final)
            if on_step is not None:
                on_step(step)
            if not final and watcher.should_stop():
                if last_saved != step:
                    _save(run, step, state, signature, miou=miou, force=True)
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
      {'status': 'completed'|'preempted', 'step', 'val': last val metrics (or None),
       'state': the final TrainState (host numpy), 'workdir', 'curves': PNG path or None,
       'attention': the attention figure's PNG path, or None (off, or no DNL block)}.
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
    finally:
        run.checkpointer.close()
        run.writer.close()
    curves = None
    if config.curves_figure and jax.process_index() == 0:
        curves = logs.save_curves_figure(workdir, title=f"{config.model.name} on "
                                         f"{config.data.name}")
    attention = None
    if config.attention_figure and status == "completed" and jax.process_index() == 0:
        from dnl_jax import viz  # imported lazily: matplotlib

        attention = viz.save_attention_figure(
            workdir, make_bundle(config, for_init=True).module,
            {"params": host_state.params, "batch_stats": host_state.batch_stats},
            run.val_source, num_classes=config.data.num_classes,
            preprocess=pipeline.figure_preprocess(config.data))
    return {"status": status, "step": int(host_state.step), "val": last_val,
            "state": host_state, "workdir": workdir, "curves": curves, "attention": attention}
