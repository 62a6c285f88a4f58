"""Parameter and FLOP counts of a model, without running it (by registry name:
`dnl_jax.tasks.summary`).

Parameters come from `jax.eval_shape` of `init` (no memory is allocated); FLOPs from XLA's cost
analysis of the lowered inference forward pass (`jax.jit(apply).lower(...).cost_analysis()`),
which counts a multiply-add as 2 FLOPs (so GMACs ≈ FLOPs / 2), before compiler fusion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def count_params(tree: Any) -> int:
    """Total number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


def summary_flops(lowered) -> float | None:
    """XLA's FLOP count of a `jax.jit(...).lower(...)` result, or None if unavailable."""
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older JAX returned one dict per computation.
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def module_summary(
    module, input_shape: Sequence[int], *, name: str, num_classes: int, print_fn=print
) -> dict:
    """Prints and returns `{'name', 'input_shape', 'params', 'params_by_module', 'flops'}` of
    `module` on inputs of `input_shape` ([B, H, W, 3] or [B, T, H, W, 3]); FLOPs of the
    inference forward pass (None when the backend gives no cost analysis)."""
    inputs = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), inputs)
    params = variables["params"]
    by_module = {key: count_params(value) for key, value in params.items()}
    lowered = jax.jit(lambda v, x: module.apply(v, x, train=False)).lower(variables, inputs)
    flops = summary_flops(lowered)
    result = dict(
        name=name,
        input_shape=list(input_shape),
        num_classes=num_classes,
        params=count_params(params),
        params_by_module=by_module,
        flops=flops,
    )
    print_fn(f"{name}  input {tuple(input_shape)}  classes {num_classes}")
    for key, value in by_module.items():
        print_fn(f"  {key:<16} {value:>14,d} params")
    print_fn(f"  {'total':<16} {result['params']:>14,d} params")
    if flops is not None:
        print_fn(f"  forward {flops / 1e9:,.1f} GFLOPs (XLA count, {flops / 2e9:,.1f} GMACs)")
    return result


__all__ = ["module_summary", "count_params", "summary_flops"]
