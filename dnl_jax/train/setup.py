"""The run's set-up, built once from the resolved config (`tasks.build`): the model bundle on the
driver, the optimizer and its schedule, the train and eval steps, the jit or pmap driver, the
input pipeline, the checkpointer, the evaluators and the init function. `Run` holds it for the
loop in train/trainer.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from dnl_jax import evaluators, tasks
from dnl_jax.data import pipeline
from dnl_jax.train import checkpoint as ckpt
from dnl_jax.train import initialisation, logs, parallel, preemption
from dnl_jax.train import step as step_lib


@dataclasses.dataclass
class Run:
    """What the loop needs, built once by `_build` from the resolved `built` (tasks/build.py:
    the task, the driver's model bundle and the host module)."""

    config: ml_collections.ConfigDict
    built: tasks.Built
    driver: Any
    schedule: Callable
    init_fn: Callable
    train_source: Any
    val_source: Any
    evaluators: list
    iterator: Any
    checkpointer: ckpt.Checkpointer
    writer: logs.MetricWriter
    watcher: preemption.PreemptionWatcher

    @property
    def bundle(self) -> tasks.ModelBundle:
        """The driver's model bundle (its batch norm on the pmap axis under pmap)."""
        return self.built.bundle


def axis_name_of(config: ml_collections.ConfigDict) -> str | None:
    """The batch-norm axis of `config.parallelism`: the pmap driver's axis, or None (jit)."""
    return parallel.PMAP_AXIS if config.parallelism == "pmap" else None


def make_init_fn(optimizer, built: tasks.Built, seed: int) -> Callable:
    """() → fresh TrainState of `built`'s host model, deterministic from `seed`
    (`Built.init_variables`: training mode, so the auxiliary head gets parameters too)."""

    def init_fn():
        # Parameters are drawn with XLA's RngBitGenerator ('unsafe_rbg'): deterministic for a
        # seed and backend, and the initialiser compiles several times faster than with
        # threefry on CPU. Training randomness (dropout) stays threefry, which is invariant to
        # how the batch is sharded.
        params_key, dropout_key = jax.random.split(jax.random.key(seed, impl="unsafe_rbg"))
        train_key = jax.random.fold_in(jax.random.key(seed), 1)
        variables = built.init_variables({"params": params_key, "dropout": dropout_key})
        params = variables["params"]
        return step_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(train_key),
        )

    return init_fn


def build_run(
    config: ml_collections.ConfigDict,
    built: tasks.Built,
    workdir: str,
    watcher: preemption.PreemptionWatcher,
) -> Run:
    """The `Run` of `config` on the resolved `built` in `workdir` (nothing written yet)."""
    bundle, task, axis_name = built.bundle, built.task, axis_name_of(config)
    initialisation.check_initialisation(config)  # before the data is opened or anything written
    schedule = step_lib.learning_rate_schedule(config.optimizer, config.total_steps)
    optimizer = step_lib.make_optimizer(config.optimizer, config.total_steps)
    train_step = step_lib.make_train_step(
        bundle, optimizer, schedule, grad_accum_steps=config.grad_accum_steps, axis_name=axis_name
    )
    eval_step = step_lib.make_eval_step(bundle, axis_name=axis_name)
    driver = parallel.make_driver(
        config.parallelism, train_step, eval_step, space=int(config.mesh.space)
    )
    train_source, val_source = task.sources(config.data)
    dataset = pipeline.train_dataset(  # hosts sharing data shards (mesh.space) read the same rows
        train_source,
        seed=config.data.seed,
        local_batch=config.batch_size // driver.data_process_count,
        process_index=driver.data_process_index,
        process_count=driver.data_process_count,
        transform=task.train_transform(config.data),
        check=task.label_check(config.data, "training clips in a batch"),
        **pipeline.worker_settings(config.data),
    )
    checkpointer = ckpt.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every_steps=config.checkpoint.every_steps,
        keep=config.checkpoint.keep,
        keep_best=config.checkpoint.keep_best,
        best_metric=f"{evaluators.RANKING_EVAL}_{bundle.best_metric}",
        every_seconds=config.checkpoint.every_seconds,
    )
    context = evaluators.EvalContext(
        bundle,
        built.module,
        val_source,
        driver,
        task.eval_inputs(config.data),
        workdir=workdir,
        between_batches=watcher.raise_if_preempted,
    )
    return Run(
        config,
        built,
        driver,
        schedule,
        make_init_fn(optimizer, built, config.seed),
        train_source,
        val_source,
        evaluators.from_config(config.evals, context),
        iter(dataset),
        checkpointer,
        logs.MetricWriter(workdir),
        watcher,
    )


__all__ = ["Run", "axis_name_of", "build_run", "make_init_fn"]
