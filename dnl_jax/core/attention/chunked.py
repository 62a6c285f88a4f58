"""The 'chunked' kernel for the pairwise term of `dnl_jax.core.attention.dnl_attention`.

    out_i = Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j,  q̂ = q − μ_q, k̂ = k − μ_k (or q, k unwhitened)

with q `[..., N, C]`, k `[..., M, C]`, v `[..., M, Cv]` → `[..., N, Cv]`: exact attention over
query × key blocks with an online softmax (running max and running sum), wrapped in a custom VJP
that recomputes the blocks in the backward pass (flash-attention style), so no N × M array is ever
stored: memory is O(N + M) in both passes. Whitening is applied once, outside the blocks (O(N)),
by `prepare`, which the cuDNN and Pallas kernels share; a static scale multiplies the float32
logits, a traced one is folded into the queries.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dnl_jax.core.target_platform import compile_platform

Array = jax.Array


class BlockSizes(NamedTuple):
    """Query and key block lengths of the 'chunked' kernel (clamped to N and M)."""

    query: int
    key: int


# Chosen per platform. CPU: timed at N=4096, B=2, C=256 on a 2-core shared machine, where
# (query, key) = (4096, 256) was fastest and (512..1024, 512..1024) within ~10% of it: big query
# blocks keep the matmuls large while the per-step logits [B, 4096, 256] stay bounded in N.
# GPU/TPU: square blocks, a guess sized for on-chip memory, not measured.
_DEFAULT_BLOCK_SIZES = {
    "cpu": BlockSizes(query=4096, key=256),
    "gpu": BlockSizes(query=512, key=512),
    "tpu": BlockSizes(query=512, key=512),
}
_block_sizes_override: list[BlockSizes | None] = [None]


def default_block_sizes(platform: str | None = None) -> BlockSizes:
    """Block sizes for `platform` ('cpu', 'gpu', 'tpu'; None = the platform the computation is
    compiled for: `target_platform.compile_platform`, so an AOT compile for TPU gets TPU blocks)."""
    if _block_sizes_override[0] is not None:
        return _block_sizes_override[0]
    platform = platform or compile_platform()
    return _DEFAULT_BLOCK_SIZES.get(platform, BlockSizes(512, 512))


@contextlib.contextmanager
def block_sizes_override(query: int, key: int) -> Iterator[None]:
    """Within the context, 'chunked' kernels traced via `dnl_attention` use these blocks.

    Read at trace time: re-trace (a fresh `jax.jit`) for a jitted function to see a new value.
    """
    sizes = _check_block_sizes(BlockSizes(query, key))
    previous, _block_sizes_override[0] = _block_sizes_override[0], sizes
    try:
        yield
    finally:
        _block_sizes_override[0] = previous


def _check_block_sizes(sizes: BlockSizes) -> BlockSizes:
    if not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ValueError(f"block sizes must be positive integers; got {tuple(sizes)}.")
    return sizes


# ----------------------------------------------------------------------------------------------
# Shared preparation: broadcast leading axes, whiten once (O(N)), place the scale.
# ----------------------------------------------------------------------------------------------


def flatten_leading(q: Array, k: Array, v: Array):
    """Broadcasts the leading axes and flattens them: `[B, N, C]`, `[B, M, C]`, `[B, M, Cv]`."""
    leading = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    flat = [
        jnp.broadcast_to(x, leading + x.shape[-2:]).reshape(-1, *x.shape[-2:]) for x in (q, k, v)
    ]
    return leading, flat


def whiten_and_scale(q: Array, k: Array, v: Array, scale, whiten: bool):
    """(scale · q̂, k, v) in the common operand dtype; whitening and scaling in >= float32.

    Only the queries are whitened: softmax_j(q̂_iᵀk̂_j) == softmax_j(q̂_iᵀk_j), since the two
    differ by q̂_iᵀμ_k, constant over the key axis j (for the gradients too: the keys' gradient
    Σ_i ds_ij q̂_i sums to zero over j either way). Whitened keys would have to be rounded to a
    bfloat16 operand again; unwhitened bfloat16 keys go to the matmuls exactly as given, which
    keeps dq and dk of bfloat16 inputs within 1.6× of the floor that bfloat16 inputs set
    instead of 2.3× (`experiments/benchmarks/bf16_accuracy.py`, RESULTS.md). `scale` multiplies
    the queries before their one rounding; `prepare` passes 1.0 here when the kernel applies a
    static scale to its float32 logits instead.
    """
    operand_dtype = jnp.result_type(q, k, v)
    compute_dtype = jnp.promote_types(operand_dtype, jnp.float32)
    q, k = q.astype(compute_dtype), k.astype(compute_dtype)
    if whiten:
        q = q - jnp.mean(q, axis=-2, keepdims=True)
    q = q * jnp.asarray(scale, compute_dtype)
    return q.astype(operand_dtype), k.astype(operand_dtype), v.astype(operand_dtype)


def static_scale(scale) -> float | None:
    """`scale` as a python float if it is known at trace time, else None (a traced value)."""
    try:
        return float(scale)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def prepare(q: Array, k: Array, v: Array, scale, whiten: bool):
    """(leading axes, q̂ `[B, N, C]`, k `[B, M, C]`, v `[B, M, Cv]`, logit scale) for a kernel.

    A static scale is returned for the kernel to apply to its float32 logits (the queries are
    then rounded to the operand dtype unscaled); a traced one is folded into the queries and
    the returned logit scale is 1.0. Applying a scale of 5 (C = 16, T = 0.05) to the float32
    logits instead of folding it brought dq of bfloat16 inputs at N = 63 from 2.9× to 0.8× the
    floor, the same kernel otherwise (RESULTS.md (j)).
    """
    leading, (q3, k3, v3) = flatten_leading(q, k, v)
    logit_scale = static_scale(scale)
    q3, k3, v3 = whiten_and_scale(q3, k3, v3, 1.0 if logit_scale is not None else scale, whiten)
    return leading, q3, k3, v3, 1.0 if logit_scale is None else logit_scale


# ----------------------------------------------------------------------------------------------
# 'chunked': blocked online softmax with a recomputing custom VJP.
# Blocked layout: [num_blocks, B, block, C], so `lax.scan` walks the leading axis.
# ----------------------------------------------------------------------------------------------


def _to_blocks(x: Array, block: int) -> Array:
    """`[B, L, C]` → `[ceil(L / block), B, block, C]`, zero-padding L."""
    pad = -x.shape[1] % block
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    return x.reshape(x.shape[0], -1, block, x.shape[-1]).transpose(1, 0, 2, 3)


def _from_blocks(x: Array, length: int) -> Array:
    """Inverse of `_to_blocks`: `[n, B, block, C]` → `[B, length, C]`."""
    x = x.transpose(1, 0, 2, 3)
    return x.reshape(x.shape[0], -1, x.shape[-1])[:, :length]


def _key_bias(num_blocks: int, block: int, num_keys: int) -> Array | None:
    """`[num_blocks, block]`: 0 for real keys, −inf for padding (None when there is none).

    Padding is shorter than one block, so every key block holds a real key and the running max
    stays finite.
    """
    if num_blocks * block == num_keys:
        return None
    valid = jnp.arange(num_blocks * block) < num_keys
    return jnp.where(valid, 0.0, -jnp.inf).astype(jnp.float32).reshape(num_blocks, block)


def _matmul(spec: str, a: Array, b: Array) -> Array:
    """einsum with float32 accumulation (bfloat16 operands stay bfloat16)."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _block_logits(q_blk: Array, key_step, scale: float) -> Array:
    """scale · `[B, bq, C]` × one key step (k `[B, bk, C]`, v, optional bias) → float32
    `[B, bq, bk]`, the scale applied to the float32 logits.

    Padded keys get −inf from the bias.
    """
    s = _matmul("bqc,bkc->bqk", q_blk, key_step[0])
    s = s if scale == 1.0 else s * scale
    return s + key_step[2] if len(key_step) == 3 else s


def _key_xs(k_blocks: Array, v_blocks: Array, num_keys: int):
    bias = _key_bias(k_blocks.shape[0], k_blocks.shape[2], num_keys)
    return (k_blocks, v_blocks) if bias is None else (k_blocks, v_blocks, bias)


def _forward_query_block(q_blk: Array, key_xs, scale: float) -> tuple[Array, Array]:
    """One query block against all key blocks with a running max m and running sum l.

    Returns (out `[B, bq, Cv]` float32, logsumexp `[B, bq]` float32).
    """
    batch, block_q = q_blk.shape[:2]
    value_dtype, cv = key_xs[1].dtype, key_xs[1].shape[-1]

    def step(carry, xs):
        m, denom, acc = carry
        s = _block_logits(q_blk, xs, scale)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        correction = jnp.exp(m - m_new)  # exp(−inf) = 0 on the first block
        p = jnp.exp(s - m_new[..., None])
        denom = denom * correction + jnp.sum(p, axis=-1)
        pv = _matmul("bqk,bkc->bqc", p.astype(value_dtype), xs[1])
        return (m_new, denom, acc * correction[..., None] + pv), None

    init = (
        jnp.full((batch, block_q), -jnp.inf, jnp.float32),
        jnp.zeros((batch, block_q), jnp.float32),
        jnp.zeros((batch, block_q, cv), jnp.float32),
    )
    (m, denom, acc), _ = jax.lax.scan(step, init, key_xs)
    return acc / denom[..., None], m + jnp.log(denom)


def _blocked_forward(q_blocks, k_blocks, v_blocks, static):
    num_keys, scale = static
    key_xs = _key_xs(k_blocks, v_blocks, num_keys)
    return jax.lax.map(lambda q_blk: _forward_query_block(q_blk, key_xs, scale), q_blocks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked_attention(q_blocks: Array, k_blocks: Array, v_blocks: Array, static) -> Array:
    """softmax(scale · q kᵀ) v on blocked, padded inputs; float32 output `[nq, B, bq, Cv]`.
    `static` = (number of real keys, scale: a python float)."""
    return _blocked_forward(q_blocks, k_blocks, v_blocks, static)[0]


def _blocked_attention_fwd(q_blocks, k_blocks, v_blocks, static):
    out, logsumexp = _blocked_forward(q_blocks, k_blocks, v_blocks, static)
    return out, (q_blocks, k_blocks, v_blocks, out, logsumexp)


def _backward_query_block(q_blk, d_out, logsumexp, delta, key_xs, scale):
    """Gradients from one query block: (dq `[B, bq, C]`, dk, dv `[nk, B, bk, ·]`), float32.

    With p = exp(s − logsumexp) recomputed per block: dv = pᵀ dO, dp = dO vᵀ,
    ds = scale · p ⊙ (dp − δ) with δ_i = Σ_c dO_ic out_ic, dq = ds k, dk = dsᵀ q.
    """
    dtype = q_blk.dtype
    d_out = d_out.astype(dtype)

    def step(dq, xs):
        k_blk, v_blk = xs[0], xs[1]
        p = jnp.exp(_block_logits(q_blk, xs, scale) - logsumexp[..., None])
        dv = _matmul("bqk,bqc->bkc", p.astype(dtype), d_out)
        dp = _matmul("bqc,bkc->bqk", d_out, v_blk)
        ds = p * (dp - delta[..., None])
        ds = (ds if scale == 1.0 else ds * scale).astype(dtype)
        dq = dq + _matmul("bqk,bkc->bqc", ds, k_blk)
        dk = _matmul("bqk,bqc->bkc", ds, q_blk)
        return dq, (dk, dv)

    return jax.lax.scan(step, jnp.zeros(q_blk.shape, jnp.float32), key_xs)


def _blocked_attention_bwd(static, residuals, d_out_blocks):
    num_keys, scale = static
    q_blocks, k_blocks, v_blocks, out, logsumexp = residuals
    delta = jnp.sum(d_out_blocks * out, axis=-1)  # [nq, B, bq]
    key_xs = _key_xs(k_blocks, v_blocks, num_keys)

    def step(carry, xs):
        dq, (dk, dv) = _backward_query_block(*xs, key_xs, scale)
        return (carry[0] + dk, carry[1] + dv), dq

    init = (jnp.zeros(k_blocks.shape, jnp.float32), jnp.zeros(v_blocks.shape, jnp.float32))
    (dk, dv), dq = jax.lax.scan(step, init, (q_blocks, d_out_blocks, logsumexp, delta))
    return dq.astype(q_blocks.dtype), dk.astype(k_blocks.dtype), dv.astype(v_blocks.dtype)


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


def chunked_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    scale,
    whiten: bool = True,
    block_sizes: BlockSizes | None = None,
) -> Array:
    """Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j in O(N + M) memory, forward and backward.

    Args:
      q: queries `[..., N, C]`; k: keys `[..., M, C]`; v: values `[..., M, Cv]` (leading axes
        broadcast). N and M need not be multiples of the block sizes (padded and masked).
      scale: multiplies the logits: applied to the float32 logits when static (a number), folded
        into the queries when traced (e.g. a learnt scale).
      whiten: subtract the position means μ_q, μ_k first.
      block_sizes: (query, key) block lengths; None = `default_block_sizes` of the platform
        the computation is compiled for (the mesh in context, else q's devices).

    Returns:
      `[..., N, Cv]` in the dtype of `v`.
    """
    sizes = _check_block_sizes(
        BlockSizes(*(block_sizes or default_block_sizes(compile_platform(q))))
    )
    leading, q3, k3, v3, logit_scale = prepare(q, k, v, scale, whiten)
    num_queries, num_keys = q3.shape[1], k3.shape[1]
    block_q, block_k = min(sizes.query, num_queries), min(sizes.key, num_keys)
    out = _blocked_attention(
        _to_blocks(q3, block_q),
        _to_blocks(k3, block_k),
        _to_blocks(v3, block_k),
        (num_keys, logit_scale),
    )
    out = _from_blocks(out, num_queries)
    return out.reshape(*leading, num_queries, v.shape[-1]).astype(v.dtype)
