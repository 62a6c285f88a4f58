"""Memory-efficient kernels for the pairwise term of `dnl_jax.ops.dnl_attention`.

All kernels compute the same quantity as the materialised 'xla' path,

    out_i = Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j,  q̂ = q − μ_q, k̂ = k − μ_k (or q, k unwhitened)

with q `[..., N, C]`, k `[..., M, C]`, v `[..., M, Cv]` → `[..., N, Cv]`:

- 'chunked': exact attention over query × key blocks with an online softmax (running max and
  running sum), wrapped in a custom VJP that recomputes the blocks in the backward pass
  (flash-attention style), so no N × M array is ever stored: memory is O(N + M) in both passes.
  Whitening and the scale are applied once, outside the blocks (O(N)).
- 'cudnn': `jax.nn.dot_product_attention(implementation='cudnn')` (cuDNN's fused flash kernel) on
  NVIDIA GPUs, for bfloat16/float16 inputs.
- None (auto): `select_implementation` picks one from the platform, shapes and dtype; the choice is
  logged once per distinct case through `logging`.

Whitening and scaling run in at least float32 and the result is cast back to the input dtype, so
bfloat16 inputs feed bfloat16 matmuls that accumulate in float32 (`preferred_element_type`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dnl_jax import ops

Array = jax.Array

logger = logging.getLogger(__name__)

KERNELS = ("xla", "chunked", "cudnn")

# Below this many logits per sample the materialised matrix is small (4 MiB in float32) and one
# big fused matmul + softmax beats a loop of blocks.
_MATERIALISE_MAX_LOGITS = 1024 * 1024


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
_block_sizes_override: list[Optional[BlockSizes]] = [None]


def default_block_sizes(platform: Optional[str] = None) -> BlockSizes:
    """Block sizes for `platform` ('cpu', 'gpu', 'tpu'; None = JAX's default backend)."""
    if _block_sizes_override[0] is not None:
        return _block_sizes_override[0]
    platform = platform or jax.default_backend()
    return _DEFAULT_BLOCK_SIZES.get(platform, BlockSizes(512, 512))


@contextlib.contextmanager
def block_sizes_override(query: int, key: int) -> Iterator[None]:
    """Within the context, 'chunked' kernels traced via `ops.dnl_attention` use these blocks.

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
# Shared preparation: broadcast leading axes, whiten and scale once (O(N)).
# ----------------------------------------------------------------------------------------------


def _flatten_leading(q: Array, k: Array, v: Array):
    """Broadcasts the leading axes and flattens them: `[B, N, C]`, `[B, M, C]`, `[B, M, Cv]`."""
    leading = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    flat = [
        jnp.broadcast_to(x, leading + x.shape[-2:]).reshape(-1, *x.shape[-2:]) for x in (q, k, v)
    ]
    return leading, flat


def _prepare_query_key(q: Array, k: Array, v: Array, scale, whiten: bool):
    """(scale · q̂, k̂, v) in the common operand dtype; whitening and scaling in >= float32.

    The scale is folded into the queries so that the kernels need no static scale argument (it
    may be a traced value, e.g. a learnt temperature).
    """
    operand_dtype = jnp.result_type(q, k, v)
    compute_dtype = jnp.promote_types(operand_dtype, jnp.float32)
    q, k = q.astype(compute_dtype), k.astype(compute_dtype)
    if whiten:
        q = q - jnp.mean(q, axis=-2, keepdims=True)
        k = k - jnp.mean(k, axis=-2, keepdims=True)
    q = q * jnp.asarray(scale, compute_dtype)
    return q.astype(operand_dtype), k.astype(operand_dtype), v.astype(operand_dtype)


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


def _key_bias(num_blocks: int, block: int, num_keys: int) -> Optional[Array]:
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


def _block_logits(q_blk: Array, key_step) -> Array:
    """`[B, bq, C]` × one key step (k `[B, bk, C]`, v, optional bias) → float32 `[B, bq, bk]`.

    Padded keys get −inf from the bias.
    """
    s = _matmul("bqc,bkc->bqk", q_blk, key_step[0])
    return s + key_step[2] if len(key_step) == 3 else s


def _key_xs(k_blocks: Array, v_blocks: Array, num_keys: int):
    bias = _key_bias(k_blocks.shape[0], k_blocks.shape[2], num_keys)
    return (k_blocks, v_blocks) if bias is None else (k_blocks, v_blocks, bias)


def _forward_query_block(q_blk: Array, key_xs) -> tuple[Array, Array]:
    """One query block against all key blocks with a running max m and running sum l.

    Returns (out `[B, bq, Cv]` float32, logsumexp `[B, bq]` float32).
    """
    batch, block_q = q_blk.shape[:2]
    value_dtype, cv = key_xs[1].dtype, key_xs[1].shape[-1]

    def step(carry, xs):
        m, l, acc = carry
        s = _block_logits(q_blk, xs)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        correction = jnp.exp(m - m_new)  # exp(−inf) = 0 on the first block
        p = jnp.exp(s - m_new[..., None])
        l = l * correction + jnp.sum(p, axis=-1)
        pv = _matmul("bqk,bkc->bqc", p.astype(value_dtype), xs[1])
        return (m_new, l, acc * correction[..., None] + pv), None

    init = (
        jnp.full((batch, block_q), -jnp.inf, jnp.float32),
        jnp.zeros((batch, block_q), jnp.float32),
        jnp.zeros((batch, block_q, cv), jnp.float32),
    )
    (m, l, acc), _ = jax.lax.scan(step, init, key_xs)
    return acc / l[..., None], m + jnp.log(l)


def _blocked_forward(q_blocks, k_blocks, v_blocks, num_keys):
    key_xs = _key_xs(k_blocks, v_blocks, num_keys)
    return jax.lax.map(lambda q_blk: _forward_query_block(q_blk, key_xs), q_blocks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked_attention(q_blocks: Array, k_blocks: Array, v_blocks: Array, num_keys: int) -> Array:
    """softmax(q kᵀ) v on blocked, padded inputs; float32 output `[nq, B, bq, Cv]`."""
    return _blocked_forward(q_blocks, k_blocks, v_blocks, num_keys)[0]


def _blocked_attention_fwd(q_blocks, k_blocks, v_blocks, num_keys):
    out, logsumexp = _blocked_forward(q_blocks, k_blocks, v_blocks, num_keys)
    return out, (q_blocks, k_blocks, v_blocks, out, logsumexp)


def _backward_query_block(q_blk, d_out, logsumexp, delta, key_xs):
    """Gradients from one query block: (dq `[B, bq, C]`, dk, dv `[nk, B, bk, ·]`), float32.

    With p = exp(s − logsumexp) recomputed per block: dv = pᵀ dO, dp = dO vᵀ,
    ds = p ⊙ (dp − δ) with δ_i = Σ_c dO_ic out_ic, dq = ds k, dk = dsᵀ q.
    """
    dtype = q_blk.dtype
    d_out = d_out.astype(dtype)

    def step(dq, xs):
        k_blk, v_blk = xs[0], xs[1]
        p = jnp.exp(_block_logits(q_blk, xs) - logsumexp[..., None])
        dv = _matmul("bqk,bqc->bkc", p.astype(dtype), d_out)
        dp = _matmul("bqc,bkc->bqk", d_out, v_blk)
        ds = (p * (dp - delta[..., None])).astype(dtype)
        dq = dq + _matmul("bqk,bkc->bqc", ds, k_blk)
        dk = _matmul("bqk,bqc->bkc", ds, q_blk)
        return dq, (dk, dv)

    return jax.lax.scan(step, jnp.zeros(q_blk.shape, jnp.float32), key_xs)


def _blocked_attention_bwd(num_keys, residuals, d_out_blocks):
    q_blocks, k_blocks, v_blocks, out, logsumexp = residuals
    delta = jnp.sum(d_out_blocks * out, axis=-1)  # [nq, B, bq]
    key_xs = _key_xs(k_blocks, v_blocks, num_keys)

    def step(carry, xs):
        dq, (dk, dv) = _backward_query_block(*xs, key_xs)
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
    block_sizes: Optional[BlockSizes] = None,
) -> Array:
    """Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j in O(N + M) memory, forward and backward.

    Args:
      q: queries `[..., N, C]`; k: keys `[..., M, C]`; v: values `[..., M, Cv]` (leading axes
        broadcast). N and M need not be multiples of the block sizes (padded and masked).
      scale: multiplies the logits (python float or traced scalar).
      whiten: subtract the position means μ_q, μ_k first.
      block_sizes: (query, key) block lengths; None = `default_block_sizes()`.

    Returns:
      `[..., N, Cv]` in the dtype of `v`.
    """
    sizes = _check_block_sizes(BlockSizes(*(block_sizes or default_block_sizes())))
    leading, (q3, k3, v3) = _flatten_leading(q, k, v)
    q3, k3, v3 = _prepare_query_key(q3, k3, v3, scale, whiten)
    num_queries, num_keys = q3.shape[1], k3.shape[1]
    block_q, block_k = min(sizes.query, num_queries), min(sizes.key, num_keys)
    out = _blocked_attention(
        _to_blocks(q3, block_q), _to_blocks(k3, block_k), _to_blocks(v3, block_k), num_keys
    )
    out = _from_blocks(out, num_queries)
    return out.reshape(*leading, num_queries, v.shape[-1]).astype(v.dtype)


# ----------------------------------------------------------------------------------------------
# 'cudnn': cuDNN's fused flash attention through jax.nn.dot_product_attention.
# ----------------------------------------------------------------------------------------------

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _nvidia_compute_capability() -> Optional[tuple[int, ...]]:
    """The default GPU's CUDA compute capability, or None off NVIDIA GPUs."""
    if jax.default_backend() != "gpu":
        return None
    device = jax.devices()[0]
    if "cuda" not in getattr(device.client, "platform_version", "").lower():
        return None  # e.g. ROCm
    return tuple(int(part) for part in device.compute_capability.split("."))


def cudnn_unsupported_reason(q: Array, k: Array, v: Array) -> Optional[str]:
    """Why the cuDNN kernel cannot run these inputs here, or None if it can.

    cuDNN flash attention wants an NVIDIA GPU, bfloat16/float16 operands and a head dim (C) that is
    a multiple of 8 and <= 128 (<= 256 from Hopper, compute capability 9.0), with Cv == C.
    """
    capability = _nvidia_compute_capability()
    if capability is None:
        return f"it needs an NVIDIA GPU (default backend here: {jax.default_backend()!r})"
    dtype = jnp.result_type(q, k, v)
    if dtype not in _CUDNN_DTYPES:
        return f"it needs bfloat16 or float16 inputs (got {dtype}); cast q, k, v, e.g. to bfloat16"
    channels, max_channels = q.shape[-1], 256 if capability >= (9, 0) else 128
    if channels % 8 or channels > max_channels:
        return f"the channel count C={channels} must be a multiple of 8 and <= {max_channels}"
    if v.shape[-1] != channels:
        return f"value channels Cv={v.shape[-1]} must equal query/key channels C={channels}"
    return None


def cudnn_attention(q: Array, k: Array, v: Array, *, scale, whiten: bool = True) -> Array:
    """Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j with cuDNN's fused kernel (NVIDIA GPUs only).

    Shapes as `chunked_attention`; leading axes are flattened into cuDNN's batch axis with a
    single head, `[B, T, 1, C]`. The scale (and so the temperature) is folded into the queries.

    Raises:
      ValueError: where cuDNN cannot run (CPU/TPU, float32 inputs, unsupported C); the message
        says why and what to use instead.
    """
    reason = cudnn_unsupported_reason(q, k, v)
    if reason is not None:
        raise ValueError(
            f"implementation='cudnn' is unavailable: {reason}. Use implementation='chunked' "
            "(exact, O(N) memory, any platform) or None to choose automatically."
        )
    leading, (q3, k3, v3) = _flatten_leading(q, k, v)
    q3, k3, v3 = _prepare_query_key(q3, k3, v3, scale, whiten)
    out = jax.nn.dot_product_attention(
        q3[:, :, None], k3[:, :, None], v3[:, :, None], scale=1.0, implementation="cudnn"
    )
    return out[:, :, 0].reshape(*leading, q.shape[-2], v.shape[-1]).astype(v.dtype)


# ----------------------------------------------------------------------------------------------
# Automatic choice and dispatch.
# ----------------------------------------------------------------------------------------------

_logged_choices: set = set()


def select_implementation(q: Array, k: Array, v: Array) -> str:
    """The kernel `implementation=None` uses for these inputs: 'cudnn', 'xla' or 'chunked'.

    - 'cudnn' where `cudnn_unsupported_reason` finds nothing (NVIDIA GPU, bf16/f16, C supported);
    - 'xla' when the logits are small (N · M <= 2**20 per sample): the materialised matrix is
      then a few MiB and one fused matmul + softmax is fastest;
    - 'chunked' otherwise: exact and O(N + M) memory on any platform.

    Only static information (shapes, dtypes, backend) is used, so this works on tracers.
    """
    if cudnn_unsupported_reason(q, k, v) is None:
        choice = "cudnn"
    elif q.shape[-2] * k.shape[-2] <= _MATERIALISE_MAX_LOGITS:
        choice = "xla"
    else:
        choice = "chunked"
    key = (jax.default_backend(), q.shape, k.shape, v.shape, str(jnp.result_type(q, k, v)), choice)
    if key not in _logged_choices:
        _logged_choices.add(key)
        logger.info(
            "dnl attention: implementation=None chose %r for q%s k%s v%s %s on %s.",
            choice, q.shape, k.shape, v.shape, key[4], key[0],
        )
    return choice


def pairwise_attention(
    q: Array, k: Array, v: Array, *, scale, whiten: bool, implementation: Optional[str]
) -> Array:
    """Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j with the named kernel; None = `select_implementation`.

    With None, a cuDNN rejection at trace time (a constraint `cudnn_unsupported_reason` does not
    know) falls back to 'chunked' with a warning; a named kernel never changes silently.
    """
    automatic = implementation is None
    if automatic:
        implementation = select_implementation(q, k, v)
    if implementation == "xla":
        return ops.materialised_pairwise_attention(q, k, v, scale=scale, whiten=whiten)
    if implementation == "chunked":
        return chunked_attention(q, k, v, scale=scale, whiten=whiten)
    if implementation == "cudnn":
        if not automatic:
            return cudnn_attention(q, k, v, scale=scale, whiten=whiten)
        try:
            return cudnn_attention(q, k, v, scale=scale, whiten=whiten)
        except NotImplementedError as error:
            logger.warning("dnl attention: cuDNN rejected q%s (%s); using 'chunked'.", q.shape,
                           error)
            return chunked_attention(q, k, v, scale=scale, whiten=whiten)
    raise ValueError(
        f"unknown attention implementation {implementation!r}; choose one of {KERNELS}."
    )
