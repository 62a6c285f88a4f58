"""The optimizer of a run: SGD with momentum, L2 weight decay with per-parameter multipliers
(mmengine's `paramwise_cfg.custom_keys`), gradient clipping, frozen parameters, and the
learning-rate schedules (mmseg's poly with warm-up, mmdet's step decay with linear warm-up).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """`opt.schedule`: 'poly', mmseg's lr_t = (lr − min_lr)(1 − t/T)^power + min_lr, optionally
    preceded by a linear warm-up from lr·warmup_ratio to lr over `warmup_steps` (then
    T = total − warmup); or 'step', mmdet's MultiStepLR × LinearLR: lr · decay_factor^(number of
    decay_steps <= t), times (warmup_ratio + (1 − warmup_ratio) · t / warmup_steps) while
    t < warmup_steps."""
    if opt.get("schedule", "poly") == "step":
        return _step_schedule(opt)
    poly = optax.polynomial_schedule(
        init_value=opt.lr,
        end_value=opt.min_lr,
        power=opt.poly_power,
        transition_steps=total_steps - opt.warmup_steps,
    )
    if opt.warmup_steps == 0:
        return poly
    warmup = optax.linear_schedule(opt.lr * opt.warmup_ratio, opt.lr, opt.warmup_steps)
    return optax.join_schedules([warmup, poly], boundaries=[opt.warmup_steps])


def _step_schedule(opt: ml_collections.ConfigDict) -> optax.Schedule:
    decay_steps = tuple(opt.decay_steps)
    warmup_steps = max(int(opt.warmup_steps), 1)

    def schedule(step):
        passed = sum(step >= boundary for boundary in decay_steps)
        warm = jnp.where(
            step < opt.warmup_steps,
            opt.warmup_ratio + (1 - opt.warmup_ratio) * step / warmup_steps,
            1.0,
        )
        return opt.lr * opt.decay_factor**passed * warm

    return schedule


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay added to the gradient (PyTorch/mmseg semantics:
    g ← clip(g) + wd·mult(θ)·θ; m ← μ·m + g; θ ← θ − lr_t·m), mult(θ) from
    `opt.weight_decay_multipliers` (see `weight_decay_multiplier`; 1 without a match).
    Parameters under a prefix of `opt.frozen` get no update at all (mmdet's frozen stages: no
    gradient, so no clipping share and no decay either).
    """
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.weight_decay > 0:
        parts.extend(_decayed_weights(opt.weight_decay, opt.get("weight_decay_multipliers", ())))
    parts.append(optax.sgd(learning_rate_schedule(opt, total_steps), momentum=opt.momentum))
    optimizer = optax.chain(*parts)
    frozen = tuple(opt.get("frozen", ()))
    if not frozen:
        return optimizer
    return optax.multi_transform(
        {"train": optimizer, "frozen": optax.set_to_zero()},
        functools.partial(_frozen_labels, prefixes=frozen),
    )


def _frozen_labels(params, prefixes: tuple[str, ...]):
    """'frozen' for the parameters whose '/'-joined path starts with one of `prefixes`, else
    'train'; ValueError for a prefix that matches nothing."""
    paths = _paths(params)
    names = jax.tree.leaves(paths)
    unused = [p for p in prefixes if not any(name.startswith(p) for name in names)]
    if unused:
        raise ValueError(
            f"optimizer.frozen: prefix(es) {unused} match no parameter; paths look "
            f"like {names[:3]}."
        )
    return jax.tree.map(lambda path: "frozen" if path.startswith(prefixes) else "train", paths)


def _paths(params):
    """The tree of '/'-joined parameter paths."""
    return jax.tree_util.tree_map_with_path(
        lambda key_path, _: "/".join(str(getattr(k, "key", k)) for k in key_path), params
    )


def check_weight_decay_multipliers(multipliers) -> tuple[tuple[str, float], ...]:
    """Validates `((pattern, multiplier), ...)`: non-empty distinct patterns, multipliers >= 0."""
    try:
        pairs = tuple((pattern, float(mult)) for pattern, mult in multipliers)
    except (TypeError, ValueError):
        pairs = None
    if (
        pairs is None
        or not all(isinstance(p, str) and p and m >= 0 for p, m in pairs)
        or len({p for p, _ in pairs}) != len(pairs)
    ):
        raise ValueError(
            f"optimizer.weight_decay_multipliers={multipliers!r} must be pairs (pattern, "
            "multiplier >= 0) with distinct non-empty patterns, e.g. (('theta', 0.0), "
            "('phi', 0.0))."
        )
    return pairs


def weight_decay_multiplier(path: str, multipliers: tuple[tuple[str, float], ...]) -> float:
    """The multiplier of the parameter at `path` ('/'-joined, e.g.
    'decode_head/dnl_block/theta/conv/kernel'), as mmengine's `paramwise_cfg.custom_keys`
    (DefaultOptimWrapperConstructor.add_params): the patterns that are substrings of the path
    are tried longest first (equal lengths alphabetically), the first one wins; 1.0 without a
    match. Patterns match our '/'-separated names, not mmseg's '.'-separated ones."""
    for pattern, mult in sorted(sorted(multipliers), key=lambda pair: len(pair[0]), reverse=True):
        if pattern in path:
            return mult
    return 1.0


def _decayed_weights(weight_decay: float, multipliers) -> list[optax.GradientTransformation]:
    """`add_decayed_weights` for all parameters, or one per distinct multiplier, each masked to
    the parameters it applies to (no decay where the multiplier is 0)."""
    pairs = check_weight_decay_multipliers(multipliers)
    if not pairs:
        return [optax.add_decayed_weights(weight_decay)]

    def mask_for(value: float):
        def mask(params):
            unused = {p for p, _ in pairs} - {
                p for p, _ in pairs for path in jax.tree.leaves(_paths(params)) if p in path
            }
            if unused:
                raise ValueError(
                    f"optimizer.weight_decay_multipliers: pattern(s) "
                    f"{sorted(unused)} match no parameter name; names look like "
                    f"{jax.tree.leaves(_paths(params))[:3]}."
                )
            return jax.tree.map(
                lambda path: weight_decay_multiplier(path, pairs) == value, _paths(params)
            )

        return mask

    values = sorted({weight_decay_multiplier("", pairs)} | {m for _, m in pairs})
    return [
        optax.add_decayed_weights(weight_decay * value, mask=mask_for(value))
        for value in values
        if value > 0
    ]
