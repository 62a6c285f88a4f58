"""Non-local attention with the positions sharded over the mesh's 'space' axis (`shard_map`).

Under a mesh with a 'space' axis of size S > 1 (`jax.set_mesh`; the jit driver's
`config.mesh.space`), images are sharded along H and clips along T, so the flattened positions of
a block input `[B, *spatial, C]` → `[B, N, C]` are split into S contiguous slices. The functions
here compute exactly what `dnl_jax.core.attention.dnl_attention` / `ops.unary_attention` /
`ops.dot_product_aggregate` compute on the whole array, with each device holding n = ⌈N/S⌉
positions and communicating only O(M · C) per sample, never an N × M matrix:

- whitening: μ_q = psum(Σ_local q) / N, μ_k = psum(Σ_local k) / M (global means);
- unary term Σ_j softmax_j(u_j) v_j: global max (pmax, no gradient: it only stabilises), then
  psum of Σ exp(u_j − max) and of Σ exp(u_j − max) v_j;
- pairwise term: queries stay local. Keys and values are either all-gathered (then the local
  kernel, `attention.pairwise_attention`, runs on local queries × all keys), or passed around the
  ring (`lax.ppermute`, S steps): each step forms the local block's logits, and the blocks are
  merged by an online softmax (running max and sum in float32), each step rematerialised in the
  backward pass (`jax.checkpoint`). `select_strategy` picks one per shape (logged at DEBUG).
- 'dot_product' mode Σ_j (q_iᵀk_j / M) v_j = q_i · psum(Σ_local k_j v_jᵀ) / M.

Positions not divisible by S are zero-padded at the end; padded keys are masked out of every
softmax and padded queries' outputs are dropped, so results and gradients are exact (gradients
by autodiff through `shard_map`). With S == 1 (or no mesh) every function is the unsharded one.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from dnl_jax.core import attention, ops

Array = jax.Array
logger = logging.getLogger(__name__)

SPACE_AXIS = "space"
DATA_AXIS = "data"
STRATEGIES = (None, "all_gather", "ring")
# All-gather keys and values while they take at most this many bytes per device: O(M · C) per
# sample, tiny next to the activations for image non-local blocks (at 1024×2048, stride 8:
# M = 32768, C' = 256 → 32 MiB each in float32). Beyond it the ring keeps 1/S of them.
_ALL_GATHER_MAX_BYTES = 256 * 1024 * 1024
# A finite "−∞" for masked keys: a key block that is all padding then gives finite garbage that
# the first real block's rescaling exp(m_old − m_new) = 0 wipes out (−inf would give NaN).
_MASKED = -1e30
# shard_map's varying-axes type check is off: the local kernels ('chunked') start their scans
# from fresh (unannotated) carries, which it rejects inside a shard_map. The bodies are written
# for the unchecked mode, and the tests compare every output and gradient with the unsharded
# computation.
_CHECK_VMA = False


def space_shards() -> int:
    """S, the size of the current mesh's 'space' axis (1 without a mesh, without that axis, or
    inside a `shard_map` that already made it manual)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or SPACE_AXIS not in mesh.axis_names:
        return 1
    axis_type = dict(zip(mesh.axis_names, mesh.axis_types, strict=False))[SPACE_AXIS]
    if axis_type == jax.sharding.AxisType.Manual:
        return 1
    return mesh.shape[SPACE_AXIS]


# ----------------------------------------------------------------------------------------------
# Sharding plumbing: pad positions to a multiple of S, pick the batch spec, shard_map.
# ----------------------------------------------------------------------------------------------


def _batch_axis(batch: int):
    """'data' for the batch axis where the mesh has it and it divides B, else None (replicated:
    e.g. the 2-example initialisation batch on a wider data axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    if DATA_AXIS in mesh.axis_names and batch % mesh.shape[DATA_AXIS] == 0:
        return DATA_AXIS
    return None


def _pad_positions(x: Array, shards: int) -> Array:
    """Zero-pads axis 1 (positions) of `[B, L, ...]` to a multiple of `shards`."""
    pad = -x.shape[1] % shards
    if not pad:
        return x
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _local_valid(local: int, total: int) -> Array:
    """`[local]` bool: which of this shard's positions are real (not padding)."""
    start = lax.axis_index(SPACE_AXIS) * local
    return start + jnp.arange(local) < total


def _compute_dtype(*arrays: Array):
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _global_mean(x: Array, total: int) -> Array:
    """μ over all shards' positions `[B, 1, C]` (padding is zeros, so it adds nothing)."""
    return lax.psum(jnp.sum(x, axis=1, keepdims=True), SPACE_AXIS) / total


# ----------------------------------------------------------------------------------------------
# Per-shard bodies (run inside shard_map; arrays are this shard's `[B, n or m, ...]`).
# ----------------------------------------------------------------------------------------------


def _unary_body(unary: Array, v: Array, num_keys: int) -> Array:
    """Σ_j softmax_j(u_j) v_j over all shards' keys → `[B, 1, Cv]` float32, the same on every
    shard."""
    valid = _local_valid(unary.shape[1], num_keys)
    u = jnp.where(valid, unary.astype(jnp.float32), _MASKED)
    top = lax.pmax(jnp.max(lax.stop_gradient(u), axis=-1), SPACE_AXIS)  # [B]
    weights = jnp.where(valid, jnp.exp(u - top[:, None]), 0.0)
    total = lax.psum(jnp.sum(weights, axis=-1), SPACE_AXIS)
    summed = lax.psum(jnp.einsum("bm,bmc->bc", weights, v.astype(jnp.float32)), SPACE_AXIS)
    return (summed / total[:, None])[:, None, :]


def _ring_step(q: Array, k: Array, v: Array, valid: Array, carry):
    """One ring block merged into the online softmax (m, denom, acc): float32 throughout."""
    m, denom, acc = carry
    s = jnp.einsum("bnc,bmc->bnm", q, k, preferred_element_type=jnp.float32)
    s = jnp.where(valid[None, None, :], s, _MASKED)
    m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(s, axis=-1)))
    correction = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[..., None])
    denom = denom * correction + jnp.sum(p, axis=-1)
    pv = jnp.einsum("bnm,bmc->bnc", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, denom, acc * correction[..., None] + pv


def _ring_attention(q: Array, k: Array, v: Array, num_keys: int, shards: int) -> Array:
    """Σ_j softmax_j(q_iᵀk_j) v_j with the key/value blocks passed around the ring `[B, n, Cv]`.

    At step t this shard holds the block of shard (i − t) mod S; its validity mask follows from
    that index, so only k and v travel.
    """
    index = lax.axis_index(SPACE_AXIS)
    local = k.shape[1]
    perm = [(i, (i + 1) % shards) for i in range(shards)]
    batch, queries = q.shape[:2]
    carry = (
        jnp.full((batch, queries), _MASKED, jnp.float32),
        jnp.zeros((batch, queries), jnp.float32),
        jnp.zeros((batch, queries, v.shape[-1]), jnp.float32),
    )
    step = jax.checkpoint(_ring_step)
    for t in range(shards):
        source = (index - t) % shards
        valid = source * local + jnp.arange(local) < num_keys
        carry = step(q, k, v, valid, carry)
        if t < shards - 1:
            k, v = lax.ppermute((k, v), SPACE_AXIS, perm)
    _, denom, acc = carry
    return acc / denom[..., None]


def _pairwise_body(
    q, k, v, *, num_queries, num_keys, scale, whiten, strategy, implementation, shards
):
    """The pairwise term for this shard's queries `[B, n, Cv]` float32 (see module docstring)."""
    dtype = _compute_dtype(q, k, v)
    q, k = q.astype(dtype), k.astype(dtype)
    if whiten:
        q = q - _global_mean(q, num_queries)
        k = k - _global_mean(k, num_keys)
    q = q * jnp.asarray(scale, dtype)
    operand = jnp.result_type(v)
    q, k = q.astype(operand), k.astype(operand)
    if strategy == "ring":
        return _ring_attention(q, k, v, num_keys, shards)
    k_all = lax.all_gather(k, SPACE_AXIS, axis=1, tiled=True)[:, :num_keys]
    v_all = lax.all_gather(v, SPACE_AXIS, axis=1, tiled=True)[:, :num_keys]
    out = attention.pairwise_attention(
        q, k_all, v_all, scale=1.0, whiten=False, implementation=implementation
    )
    return out.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Public functions: the sharded versions of attention.dnl_attention and ops' aggregations.
# ----------------------------------------------------------------------------------------------

_logged: set = set()


def select_strategy(q: Array, k: Array, v: Array, shards: int) -> str:
    """'all_gather' while one device's gathered keys and values, B_local · M · (C + Cv) bytes,
    stay within 256 MiB; else 'ring' (which holds 1/S of them). Static shapes only."""
    batch = q.shape[0]
    axis = _batch_axis(batch)
    if axis is not None:
        batch //= jax.sharding.get_abstract_mesh().shape[axis]
    gathered = batch * k.shape[1] * (k.shape[-1] + v.shape[-1]) * jnp.dtype(v.dtype).itemsize
    choice = "all_gather" if gathered <= _ALL_GATHER_MAX_BYTES else "ring"
    key = (q.shape, k.shape, v.shape, shards, choice)
    if key not in _logged:
        _logged.add(key)
        logger.debug(
            "sharded attention: %r for q%s k%s v%s over %d space shards (%d bytes of "
            "keys and values per device when gathered).",
            choice,
            q.shape,
            k.shape,
            v.shape,
            shards,
            gathered,
        )
    return choice


def _check_flat(q: Array | None, k: Array | None, v: Array) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x is not None and x.ndim != 3:
            raise ValueError(
                f"sharded attention takes flattened [B, positions, C] arrays; got "
                f"{name}.shape={x.shape}. Flatten the spatial axes first "
                "(blocks.flatten_positions)."
            )


def _shard_call(body, arrays, out_spec_space: bool):
    """shard_map `body` over the current mesh, `arrays` `[B, L_padded, ...]` sharded
    (batch, 'space'); the output `[B, L, ...]` sharded alike, or `[B, 1, ...]` replicated over
    'space' (`out_spec_space=False`)."""
    batch = _batch_axis(arrays[0].shape[0])
    spec = P(batch, SPACE_AXIS)
    return jax.shard_map(
        body,
        in_specs=tuple(spec for _ in arrays),
        out_specs=spec if out_spec_space else P(batch),
        check_vma=_CHECK_VMA,
    )(*arrays)


def dnl_attention(
    q: Array,
    k: Array,
    v: Array,
    unary: Array | None = None,
    *,
    temperature: float = 1.0,
    scale: float | None = None,
    whiten: bool = True,
    implementation: str | None = None,
    strategy: str | None = None,
) -> Array:
    """`attention.dnl_attention` (same arguments, q `[B, N, C]`, k `[B, M, C]`, v `[B, M, Cv]`,
    unary `[B, M]`) with the positions sharded over 'space' when the mesh has S > 1 shards.

    strategy: None (`select_strategy`), 'all_gather' or 'ring': how keys and values reach the
    local queries. `implementation`: the local kernel of the all-gather strategy.
    """
    shards = space_shards()
    if shards == 1:
        return attention.dnl_attention(
            q,
            k,
            v,
            unary,
            temperature=temperature,
            scale=scale,
            whiten=whiten,
            implementation=implementation,
        )
    scale = attention.pairwise_logit_scale(q, k, v, temperature=temperature, scale=scale)
    _check_flat(q, k, v)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}.")
    strategy = strategy or select_strategy(q, k, v, shards)
    num_queries, num_keys = q.shape[1], k.shape[1]
    pairwise = functools.partial(
        _pairwise_body,
        num_queries=num_queries,
        num_keys=num_keys,
        scale=scale,
        whiten=whiten,
        strategy=strategy,
        implementation=implementation,
        shards=shards,
    )

    def body(q, k, v, *maybe_unary):
        out = pairwise(q, k, v)
        if maybe_unary:
            out = out + _unary_body(maybe_unary[0], v, num_keys)
        return out.astype(v.dtype)

    arrays = [_pad_positions(x, shards) for x in (q, k, v)]
    if unary is not None:
        arrays.append(_pad_positions(unary, shards))
    return _shard_call(body, arrays, out_spec_space=True)[:, :num_queries]


def unary_attention(unary: Array, v: Array) -> Array:
    """`ops.unary_attention` (unary `[B, M]`, v `[B, M, Cv]` → `[B, 1, Cv]`), sharded over
    'space' when S > 1."""
    shards = space_shards()
    if shards == 1:
        return ops.unary_attention(unary, v)
    _check_flat(None, None, v)
    if unary.shape != v.shape[:2]:
        raise ValueError(
            f"unary logits must be [B, M] with M the number of value positions; got "
            f"unary.shape={unary.shape} and v.shape={v.shape}."
        )
    num_keys = v.shape[1]
    body = lambda u, x: _unary_body(u, x, num_keys).astype(v.dtype)  # noqa: E731
    return _shard_call(
        body, [_pad_positions(unary, shards), _pad_positions(v, shards)], out_spec_space=False
    )


def dot_product_aggregate(q: Array, k: Array, v: Array) -> Array:
    """`ops.dot_product_aggregate` (Σ_j (q_iᵀk_j / M) v_j), sharded over 'space' when S > 1 as
    q_i · psum(Σ_local k_j v_jᵀ) / M: a C × Cv matrix per sample crosses the devices."""
    shards = space_shards()
    if shards == 1:
        return ops.dot_product_aggregate(q, k, v)
    ops.check_query_key(q, k)
    ops.check_key_value(k, v)
    _check_flat(q, k, v)
    num_queries, num_keys = q.shape[1], k.shape[1]
    dtype = _compute_dtype(q, k, v)

    def body(q, k, v):
        kv = lax.psum(jnp.einsum("bmc,bmd->bcd", k.astype(dtype), v.astype(dtype)), SPACE_AXIS)
        return jnp.einsum("bnc,bcd->bnd", q.astype(dtype), kv / num_keys).astype(v.dtype)

    arrays = [_pad_positions(x, shards) for x in (q, k, v)]
    return _shard_call(body, arrays, out_spec_space=True)[:, :num_queries]


def constrain_positions(x: Array) -> Array:
    """`x [B, L, ...]` constrained to the sharding (data, 'space') along axis 1 (H of images, T
    of clips) when the mesh has S > 1 space shards; the identity otherwise. The models call it
    at stage boundaries so XLA keeps activations spatially sharded between them (convolutions
    then exchange halos; batch norm statistics are reduced over all shards)."""
    if space_shards() == 1:
        return x
    return jax.lax.with_sharding_constraint(x, P(_batch_axis(x.shape[0]), SPACE_AXIS))
