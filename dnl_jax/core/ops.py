"""The non-local family's math, as small pure `jax.numpy` functions.

Conventions: positions lie on axis -2 and channels on axis -1; any leading axes (batch, heads) are
carried along. Queries `q` are `[..., N, C]`, keys `k` are `[..., M, C]` and values `v` are
`[..., M, Cv]`; M may differ from N (sub-sampled keys). μ_q and μ_k are the means of q and k over
their position axis, per sample and per channel.

The identity behind the Disentangled Non-Local block (Yin et al., ECCV 2020):

    q_iᵀk_j = (q_i − μ_q)ᵀ(k_j − μ_k) + μ_qᵀk_j + (q_i − μ_q)ᵀμ_k
              └──── whitened pairwise ───┘ └ unary ┘ └ constant over j ┘

so softmax_j(q_iᵀk_j) == softmax_j(pairwise_ij + unary_j): the last term cancels in a softmax over
the key axis j. Softmaxes here run in at least float32 whatever the input dtype, and subtract their
row maximum, so large logits do not overflow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# ----------------------------------------------------------------------------------------------
# Input checks (static shapes only, so they are free under jit).
# ----------------------------------------------------------------------------------------------


def check_query_key(q: Array, k: Array) -> None:
    """Raises ValueError unless q `[..., N, C]` and k `[..., M, C]` share their channels."""
    if q.ndim < 2 or k.ndim < 2:
        raise ValueError(
            f"q and k must be [..., positions, channels] with rank >= 2; got q.shape={q.shape}, "
            f"k.shape={k.shape}. Add a position axis (e.g. x[..., None, :]) for single vectors."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same number of channels (last axis); got q.shape={q.shape} "
            f"({q.shape[-1]} channels) and k.shape={k.shape} ({k.shape[-1]} channels). Project "
            "both to the same width (theta and phi must share their output channels)."
        )


def check_key_value(k: Array, v: Array) -> None:
    """Raises ValueError unless k `[..., M, C]` and v `[..., M, Cv]` share their positions."""
    if v.ndim < 2 or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions (axis -2); got k.shape={k.shape} "
            f"and v.shape={v.shape}. Sub-sample keys and values with the same pooling."
        )


def _compute_dtype(*arrays: Array) -> jnp.dtype:
    """At least float32: bfloat16/float16 inputs get float32 logits and softmax."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _position_mean(x: Array) -> Array:
    """μ: mean over the position axis (-2), keeping it, `[..., 1, C]`."""
    return jnp.mean(x, axis=-2, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Logits.
# ----------------------------------------------------------------------------------------------


def nonlocal_logits(q: Array, k: Array, *, scale: float = 1.0) -> Array:
    """Plain non-local (embedded Gaussian) logits.

    Args:
      q: queries `[..., N, C]`.
      k: keys `[..., M, C]`.
      scale: multiplies the dot products.

    Returns:
      `[..., N, M]` with entry (i, j) = scale · q_iᵀk_j, in at least float32.
    """
    check_query_key(q, k)
    dtype = _compute_dtype(q, k)
    logits = jnp.einsum("...nc,...mc->...nm", q.astype(dtype), k.astype(dtype))
    return logits * jnp.asarray(scale, dtype)


def whitened_pairwise_logits(q: Array, k: Array, *, scale: float = 1.0) -> Array:
    """Whitened pairwise logits: scale · (q_i − μ_q)ᵀ(k_j − μ_k).

    Args:
      q: queries `[..., N, C]`; μ_q is their mean over the N positions.
      k: keys `[..., M, C]`; μ_k is their mean over the M positions.
      scale: multiplies the dot products.

    Returns:
      `[..., N, M]`, in at least float32. Invariant to adding any per-sample vector to all queries
      or to all keys.
    """
    check_query_key(q, k)
    dtype = _compute_dtype(q, k)
    q, k = q.astype(dtype), k.astype(dtype)
    return nonlocal_logits(q - _position_mean(q), k - _position_mean(k), scale=scale)


def unary_logits(q: Array, k: Array, *, scale: float = 1.0) -> Array:
    """Unary logits of the decomposition: scale · μ_qᵀk_j, one per key.

    Args:
      q: queries `[..., N, C]`; only their mean μ_q over positions is used.
      k: keys `[..., M, C]`.
      scale: multiplies the dot products.

    Returns:
      `[..., 1, M]` (broadcasts over the N queries), in at least float32.
    """
    check_query_key(q, k)
    dtype = _compute_dtype(q, k)
    return nonlocal_logits(_position_mean(q.astype(dtype)), k, scale=scale)


def decompose_nonlocal_logits(q: Array, k: Array, *, scale: float = 1.0) -> tuple[Array, Array]:
    """Splits non-local logits into a whitened pairwise and a unary term.

    Returns:
      `(pairwise [..., N, M], unary [..., 1, M])` with
      softmax_j(pairwise + unary) == softmax_j(nonlocal_logits(q, k, scale=scale)): the two differ
      by scale · (q_i − μ_q)ᵀμ_k, which is constant over the key axis j.
    """
    return (
        whitened_pairwise_logits(q, k, scale=scale),
        unary_logits(q, k, scale=scale),
    )


# ----------------------------------------------------------------------------------------------
# Aggregation.
# ----------------------------------------------------------------------------------------------


def softmax_aggregate(logits: Array, v: Array) -> Array:
    """Σ_j softmax_j(logits_ij) v_j.

    Args:
      logits: `[..., N, M]` (N may be 1 for a unary term); softmax over the last axis, computed in
        at least float32 with the row maximum subtracted.
      v: values `[..., M, Cv]`.

    Returns:
      `[..., N, Cv]` in the dtype of `v`.
    """
    dtype = _compute_dtype(logits, v)
    weights = jax.nn.softmax(logits.astype(dtype), axis=-1)
    out = jnp.einsum("...nm,...mc->...nc", weights, v.astype(dtype))
    return out.astype(v.dtype)


def unary_attention(unary: Array, v: Array) -> Array:
    """The unary term on its own: Σ_j softmax_j(unary_j) v_j, one vector per sample.

    Args:
      unary: logits `[..., M]` over the key positions (e.g. a 1×1 conv C→1 of the input).
      v: values `[..., M, Cv]`.

    Returns:
      `[..., 1, Cv]`, which broadcasts over the query positions. O(M) memory: nothing N × M.
    """
    if unary.shape[-1:] != v.shape[-2:-1]:
        raise ValueError(
            f"unary logits must be [..., M] with M the number of value positions; got "
            f"unary.shape={unary.shape} and v.shape={v.shape} (M={v.shape[-2]})."
        )
    return softmax_aggregate(unary[..., None, :], v)


def dot_product_aggregate(q: Array, k: Array, v: Array) -> Array:
    """mmcv's 'dot_product' non-local mode: Σ_j (q_iᵀk_j / M) v_j, no softmax.

    Args:
      q: `[..., N, C]`; k: `[..., M, C]`; v: `[..., M, Cv]`.

    Returns:
      `[..., N, Cv]` in the dtype of `v`.
    """
    check_key_value(k, v)
    weights = nonlocal_logits(q, k, scale=1.0 / k.shape[-2])
    out = jnp.einsum("...nm,...mc->...nc", weights, v.astype(weights.dtype))
    return out.astype(v.dtype)


def pairwise_logits(q: Array, k: Array, *, scale: float, whiten: bool = True) -> Array:
    """The pairwise term's logits `[..., N, M]`: `whitened_pairwise_logits` when `whiten`, else
    the plain `nonlocal_logits`."""
    logits_fn = whitened_pairwise_logits if whiten else nonlocal_logits
    return logits_fn(q, k, scale=scale)


def materialised_pairwise_attention(
    q: Array, k: Array, v: Array, *, scale: float, whiten: bool = True
) -> Array:
    """The 'xla' kernel: Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j with the `[..., N, M]` logits formed.

    q̂, k̂ are q, k whitened (`whiten`) or as given. q `[..., N, C]`, k `[..., M, C]`,
    v `[..., M, Cv]` → `[..., N, Cv]`; O(N · M) memory.
    """
    return softmax_aggregate(pairwise_logits(q, k, scale=scale, whiten=whiten), v)


def host_softmax(logits) -> np.ndarray:
    """softmax over the last axis on the host (numpy in, numpy out, the input's float dtype):
    exp(x − max x) / Σ exp(x − max x). The one used by the evaluators (view averaging) and the
    analysis (attention rows)."""
    logits = np.asarray(logits)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)
