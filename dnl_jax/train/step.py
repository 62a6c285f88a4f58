"""Pure training and evaluation steps, shared by the jit and the pmap drivers.

The same functions run under both: with `axis_name=None` they see the global batch (jit on
sharded arrays; XLA inserts the gradient all-reduce and the cross-replica batch-norm reductions);
with `axis_name='batch'` they see one device's shard under `jax.pmap` and reduce explicitly
(`pmean` of gradients and scalars, `psum` of metric sums; the model's batch norm uses the same
axis name).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dnl_jax.models import losses

# The optimizer and schedules live in optimizer.py; these names stay importable from here.
from dnl_jax.train.optimizer import (  # noqa: F401
    check_weight_decay_multipliers,
    learning_rate_schedule,
    make_optimizer,
    weight_decay_multiplier,
)

log = logging.getLogger(__name__)


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


def split_micro_batches(batch: dict, num_micro: int) -> dict:
    """`[B, ...]` → `[num_micro, B/num_micro, ...]`, micro-batch i = examples i, i+A, i+2A, ...

    Strided rather than contiguous so that each device's contiguous shard of the batch splits
    locally (no data movement under a sharded batch axis).
    """

    def split(x):
        x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _all_finite(*trees) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def make_train_step(
    bundle,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    grad_accum_steps: int = 1,
    axis_name: str | None = None,
) -> Callable:
    """Returns `train_step(state, batch) -> (state, metrics)` (metrics: dict of f32 scalars).

    The loss is the bundle's over the global step batch: each of its ratios (losses.py) is
    Σ numerators / Σ denominators over micro-batches, devices and hosts. Denominators carry no
    gradient, so the gradient of the global loss is the sum over shards of the gradients of
    Σ_name w · numerator_shard / DENOMINATOR_global: with one micro-batch the denominators are
    summed over devices (psum) inside the forward pass, before the backward one; with
    `grad_accum_steps` > 1 a first pass over the micro-batches computes them (and the bundle's
    loss selection, e.g. OHEM's kept pixels, which is then reused; when nothing depends on the
    logits XLA drops that pass's forward computation). Batch statistics come from the last
    micro-batch. metrics: every ratio, 'loss', 'lr', 'grad_norm' and 'finite' (1.0 when the
    loss, the gradients and the updated parameters and statistics are all finite).
    """
    grad_fn = jax.value_and_grad(_make_share_of_loss(bundle, axis_name), has_aux=True)
    denominators_fn = _make_denominators_fn(bundle, axis_name)

    def train_step(state: TrainState, batch: dict):
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        rng = step_rng
        if axis_name is not None:  # independent dropout per device
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

        def accumulate(carry, inputs, denominators=None):
            grads_sum, batch_stats, ratio_sums = carry
            index, micro = inputs
            (_, (batch_stats, ratios)), grads = grad_fn(
                state.params, batch_stats, micro, _micro_rngs(rng, step_rng, index), denominators
            )
            return (_add(grads_sum, grads), batch_stats, _add(ratio_sums, ratios)), None

        micro_batches = split_micro_batches(batch, grad_accum_steps)
        first = jax.tree.map(lambda x: x[0], micro_batches)
        ratio_shapes = jax.eval_shape(
            lambda: grad_fn(
                state.params, state.batch_stats, first, _micro_rngs(rng, step_rng, 0), None
            )[0][1][1]
        )
        init = (
            jax.tree.map(jnp.zeros_like, state.params),
            state.batch_stats,
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ratio_shapes),
        )
        if grad_accum_steps == 1:  # no loop: XLA:CPU runs conv weight gradients ~40× slower
            # inside a while loop than outside one (3×3 conv, 16×16×128, measured on CPU).
            (grads, batch_stats, ratio_sums), _ = accumulate(init, (jnp.int32(0), first))
        else:
            indices = jnp.arange(grad_accum_steps)
            selections, denominators = denominators_fn(state, micro_batches, indices, rng, step_rng)
            (grads, batch_stats, ratio_sums), _ = jax.lax.scan(
                functools.partial(accumulate, denominators=denominators),
                init,
                (indices, {**micro_batches, **selections}),
            )
        if axis_name is not None:  # each device holds its share of the global sums
            grads, ratio_sums = jax.lax.psum((grads, ratio_sums), axis_name)
        loss, metrics = losses.combine_ratios(ratio_sums, bundle.loss_weights)
        return _apply_gradients(state, optimizer, grads, batch_stats, loss, metrics, schedule)

    return train_step


def _apply_gradients(state, optimizer, grads, batch_stats, loss, metrics: dict, schedule):
    """The optimizer's update of `state` with the summed `grads`, and the step's metrics (f32)."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params, batch_stats)
    metrics = {
        **metrics,
        "loss": loss,
        "lr": schedule(state.step),
        "grad_norm": grad_norm,
        "finite": finite,
    }
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)


def _micro_rngs(rng: jax.Array, step_rng: jax.Array, index) -> dict:
    """The keys of micro-batch `index`: 'dropout' from `rng` (the step's key, folded with the
    device index under pmap) and `index`; 'sampler' the step's key itself, the same on every
    device and micro-batch: the detector's RoI / anchor sampling folds in each image's id, so
    an image draws the same samples under jit, pmap and gradient accumulation."""
    return {"dropout": jax.random.fold_in(rng, index), "sampler": step_rng}


def _make_forward(bundle) -> Callable:
    """`(params, batch_stats, micro, rngs) -> (outputs, batch_stats)` of training: the bundle's
    `train_forward`, or its module on `micro[input_key]` with dropout."""

    def forward(params, batch_stats, micro, rngs):
        variables = {"params": params, "batch_stats": batch_stats}
        if bundle.train_forward is not None:
            outputs, new_vars = bundle.train_forward(variables, micro, rngs)
        else:
            outputs, new_vars = bundle.module.apply(
                variables,
                micro[bundle.input_key],
                train=True,
                rngs={"dropout": rngs["dropout"]},
                mutable=["batch_stats"],
            )
        return outputs, new_vars.get("batch_stats", batch_stats)

    return forward


def _with_selection(bundle, outputs, micro) -> dict:
    """`micro` plus the bundle's loss selection (e.g. OHEM's kept pixels), if it has one."""
    if bundle.loss_selection_fn is None:
        return micro
    return {**micro, **bundle.loss_selection_fn(jax.lax.stop_gradient(outputs), micro)}


def _global_denominators(ratios: dict, axis_name: str | None) -> dict:
    denominators = {name: jax.lax.stop_gradient(den) for name, (_, den) in ratios.items()}
    return denominators if axis_name is None else jax.lax.psum(denominators, axis_name)


def _make_share_of_loss(bundle, axis_name: str | None) -> Callable:
    """`(params, batch_stats, micro, rngs, denominators) -> (share, (batch_stats, ratios))`: this
    shard's part Σ w · numerator / global denominator of the global loss. `denominators` None:
    the micro-batch is the whole step batch, its denominators are summed over devices here
    (with the loss selection made here too); else the micro-batch carries its selection."""
    forward = _make_forward(bundle)

    def share_of_loss(params, batch_stats, micro, rngs, denominators):
        outputs, batch_stats = forward(params, batch_stats, micro, rngs)
        if denominators is None:
            micro = _with_selection(bundle, outputs, micro)
        ratios = bundle.loss_ratios_fn(outputs, micro)
        if denominators is None:
            denominators = _global_denominators(ratios, axis_name)
        share = sum(
            weight * losses.safe_ratio(ratios[name][0], denominators[name])
            for name, weight in bundle.loss_weights.items()
            if name in ratios
        )
        return share, (batch_stats, ratios)

    return share_of_loss


def _make_denominators_fn(bundle, axis_name: str | None) -> Callable:
    """`(state, micro_batches [A, b, ...], indices, rng, step_rng) -> (selections [A, b, ...],
    global denominators)`: a forward pass over the micro-batches (same dropout keys as the gradient
    pass) for the loss selection and the denominators of the whole step batch."""
    forward = _make_forward(bundle)

    def denominators_fn(state, micro_batches, indices, rng, step_rng):
        def one(inputs):
            index, micro = inputs
            outputs, _ = forward(
                state.params, state.batch_stats, micro, _micro_rngs(rng, step_rng, index)
            )
            selected = _with_selection(bundle, outputs, micro)
            ratios = bundle.loss_ratios_fn(outputs, selected)
            return (
                {key: value for key, value in selected.items() if key not in micro},
                {name: den for name, (_, den) in ratios.items()},
            )

        selections, denominators = jax.lax.map(one, (indices, micro_batches))
        totals = {name: (None, jnp.sum(den, axis=0)) for name, den in denominators.items()}
        return selections, _global_denominators(totals, axis_name)

    return denominators_fn


def warn_out_of_range_labels(metrics: dict, step: int, warned: bool) -> bool:
    """Logs once per run that labels outside [0, K) (not the ignore label) were seen, from the
    step's 'out_of_range_labels' fraction; returns whether that warning has been given."""
    fraction = metrics.get("out_of_range_labels", 0.0)
    if fraction > 0 and not warned:
        log.warning(
            "step %d: %.4g%% of the label pixels are outside [0, num_classes) and not the "
            "ignore label; the loss and the metrics leave them out. Check "
            "config.data.num_classes and the dataset's label mapping (train ids, 255 "
            "= ignore). Reported once; the 'out_of_range_labels' train metric has every "
            "step's fraction.",
            step,
            100 * fraction,
        )
        return True
    return warned


def make_eval_step(bundle, *, axis_name: str | None = None) -> Callable:
    """Returns `eval_step(state, batch) -> sums` (the bundle's metric sums, e.g. 'confusion',
    and 'nonfinite_outputs': the count of NaN / inf model outputs, which the evaluator checks),
    summed over devices when `axis_name` is set."""
    input_key = bundle.input_key

    def eval_step(state: TrainState, batch: dict):
        outputs = bundle.module.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            batch[input_key],
            train=False,
        )
        sums = dict(bundle.metrics_fn(outputs, batch))
        sums["nonfinite_outputs"] = sum(
            jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)
            for x in jax.tree.leaves(outputs)
            if jnp.issubdtype(x.dtype, jnp.inexact)
        )
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step
