"""Pure training and evaluation steps, shared by the jit and the pmap drivers.

The same functions run under both: with `axis_name=None` they see the global batch (jit on
sharded arrays; XLA inserts the gradient all-reduce and the cross-replica batch-norm reductions);
with `axis_name='batch'` they see one device's shard under `jax.pmap` and reduce explicitly
(`pmean` of gradients and scalars, `psum` of metric sums; the model's batch norm uses the same
axis name).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position.

    step: int32 scalar, optimizer steps done. rng: uint32 `[2]` raw key (dropout keys are
    `fold_in(rng, step)`, so they depend on the step only and a resumed run draws the same ones).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """mmseg's poly schedule, lr_t = (lr − min_lr)(1 − t/T)^power + min_lr, optionally preceded
    by a linear warm-up from lr·warmup_ratio to lr over `warmup_steps` (then T = total − warmup).
    """
    poly = optax.polynomial_schedule(init_value=opt.lr, end_value=opt.min_lr,
                                     power=opt.poly_power,
                                     transition_steps=total_steps - opt.warmup_steps)
    if opt.warmup_steps == 0:
        return poly
    warmup = optax.linear_schedule(opt.lr * opt.warmup_ratio, opt.lr, opt.warmup_steps)
    return optax.join_schedules([warmup, poly], boundaries=[opt.warmup_steps])


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay added to the gradient (PyTorch/mmseg semantics:
    g ← clip(g) + wd·θ; m ← μ·m + g; θ ← θ − lr_t·m).
    """
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.weight_decay > 0:
        parts.append(optax.add_decayed_weights(opt.weight_decay))
    parts.append(optax.sgd(learning_rate_schedule(opt, total_steps), momentum=opt.momentum))
    return optax.chain(*parts)


def split_micro_batches(batch: dict, num_micro: int) -> dict:
    """`[B, ...]` → `[num_micro, B/num_micro, ...]`, micro-batch i = examples i, i+A, i+2A, ...

    Strided rather than contiguous so that each device's contiguous shard of the batch splits
    locally (no data movement under a sharded batch axis).
    """
    def split(x):
        x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree.map(split, batch)


def make_train_step(bundle, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum_steps: int = 1,
                    axis_name: Optional[str] = None) -> Callable:
    """Returns `train_step(state, batch) -> (state, metrics)` (metrics: dict of f32 scalars).

    Gradients are averaged over `grad_accum_steps` micro-batches (a `lax.scan` if more than one),
    then over devices when `axis_name` is set; batch statistics come from the last micro-batch.
    """
    input_key = bundle.input_key

    def loss_and_stats(params, batch_stats, micro, rng):
        outputs, new_vars = bundle.module.apply(
            {"params": params, "batch_stats": batch_stats}, micro[input_key], train=True,
            rngs={"dropout": rng}, mutable=["batch_stats"])
        loss, metrics = bundle.loss_fn(outputs, micro)
        return loss, (new_vars.get("batch_stats", batch_stats), metrics)

    grad_fn = jax.value_and_grad(loss_and_stats, has_aux=True)

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if axis_name is not None:  # independent dropout per device
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

        def accumulate(carry, inputs):
            grads_sum, batch_stats, loss_sum, metrics_sum = carry
            index, micro = inputs
            (loss, (batch_stats, metrics)), grads = grad_fn(
                state.params, batch_stats, micro, jax.random.fold_in(rng, index))
            add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
            return (add(grads_sum, grads), batch_stats, loss_sum + loss,
                    add(metrics_sum, metrics)), None

        micro_batches = split_micro_batches(batch, grad_accum_steps)
        first = jax.tree.map(lambda x: x[0], micro_batches)
        zeros_like_metrics = jax.eval_shape(lambda: grad_fn(
            state.params, state.batch_stats, first, rng)[0][1][1])
        init = (jax.tree.map(jnp.zeros_like, state.params), state.batch_stats,
                jnp.zeros((), jnp.float32),
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros_like_metrics))
        if grad_accum_steps == 1:  # no loop: XLA:CPU runs conv weight gradients ~40× slower
            # inside a while loop than outside one (3×3 conv, 16×16×128, measured for issue 6).
            (grads, batch_stats, loss, metrics), _ = accumulate(init, (jnp.int32(0), first))
        else:
            (grads, batch_stats, loss, metrics), _ = jax.lax.scan(
                accumulate, init, (jnp.arange(grad_accum_steps), micro_batches))
        scale = 1.0 / grad_accum_steps
        grads, loss, metrics = jax.tree.map(lambda x: x * scale, (grads, loss, metrics))
        if axis_name is not None:
            grads, loss, metrics = jax.lax.pmean((grads, loss, metrics), axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "lr": schedule(state.step),
                   "grad_norm": optax.tree.norm(grads)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return train_step


def make_eval_step(bundle, *, axis_name: Optional[str] = None) -> Callable:
    """Returns `eval_step(state, batch) -> sums` (the bundle's metric sums, e.g. 'confusion'),
    summed over devices when `axis_name` is set."""
    input_key = bundle.input_key

    def eval_step(state: TrainState, batch: dict):
        outputs = bundle.module.apply({"params": state.params, "batch_stats": state.batch_stats},
                                      batch[input_key], train=False)
        sums = bundle.metrics_fn(outputs, batch)
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step
