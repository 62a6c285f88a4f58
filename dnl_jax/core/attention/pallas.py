"""The Pallas kernels for the pairwise term of `dnl_jax.core.attention.dnl_attention`.

    out_i = Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j,  q̂ = q − μ_q, k̂ = k − μ_k (or q, k unwhitened)

with q `[..., N, C]`, k `[..., M, C]`, v `[..., M, Cv]` → `[..., N, Cv]`, on JAX's own flash
attention kernels, imported, not copied:

- 'pallas_tpu': `jax.experimental.pallas.ops.tpu.flash_attention` (Mosaic TPU).
- 'pallas_gpu': `jax.experimental.pallas.ops.gpu.attention.mha` (Triton).

Both run anywhere: off their platform they run in Pallas interpret mode (slow, exact), which is
how CPU tests check them. "Their platform" is the one the computation is compiled for
(`dnl_jax.core.target_platform.compile_platform`), not the host's: an ahead-of-time compile for a
TPU topology from a CPU host lowers the real Mosaic kernel. What this module adds around them:

- Shapes: leading axes are flattened into the kernels' batch axis with one head; C and Cv are
  zero-padded to one common width (both kernels want equal q/k/v widths; the TPU kernel wants a
  width <= 128 or a multiple of 128), which changes no logit and adds only zero output columns.
- Any N and M: positions are zero-padded to a multiple of the block size and padded keys are
  masked, so padded keys get weight exactly 0 (forward and backward):
  - TPU: segment ids (queries all 1, real keys 1, padded keys 0);
  - GPU with N == M: segment ids (the kernel takes one id array for queries and keys; padded
    queries then see only padded keys and their rows are dropped);
  - GPU with N != M: the kernel's one id array cannot mask keys independently of queries, so a
    bias channel does it: queries get an extra channel of ones and keys an extra channel of 0
    (real) or −X (padded), so padded logits are −X · scale and their softmax weight underflows
    to 0 (X = 1e30, or a quarter of float16's maximum).
- The scale: passed as the kernels' `sm_scale`, which they apply to the float32 logits, when it
  is a static number; a traced scale (e.g. a learnt temperature) is folded into the queries.
- Gradients: the kernels' own backward passes. The TPU kernel reads interpret mode from a context
  at trace time, and JAX traces a backward pass after the forward call has returned, so the TPU
  call is wrapped in a custom VJP that enters the context in both passes.
- Meshes: XLA cannot partition a Mosaic kernel ("Mosaic kernels cannot be automatically
  partitioned"), so under a mesh with automatically sharded axes (the jit driver's data mesh)
  the TPU call runs in a `shard_map` that splits its batch over those axes (found by compiling
  the train step for a TPU slice ahead of time; experiments/benchmarks/tpu_aot.py). Nor a
  Triton kernel, where XLA silently gathers the whole batch onto every GPU instead: the GPU call
  runs in the same `shard_map` (found compiling for H100s; experiments/benchmarks/cuda_aot.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_attention
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from dnl_jax.core.attention import chunked
from dnl_jax.core.target_platform import compile_platform

Array = jax.Array

# Block lengths (positions). TPU: multiples of 128 (its lane width), 512 as in JAX's own TPU
# benchmarks for head dims <= 256. GPU: JAX's defaults for the Triton kernel (128 forward, 32
# backward). Neither is tuned on hardware here (no accelerator was available).
_TPU_BLOCK = 512
_TPU_LANES = 128
# The TPU backward kernels keep several block × width tiles (and float32 accumulators) in the
# scoped VMEM, 16 MiB on a v5e. Compiled for v5e (experiments/benchmarks/tpu_aot.py), 512
# positions per block overflowed it at width 2048 (bf16 and f32: 17.3-17.5 MiB) and at width
# 1024 in f32 with padded keys (Mask R-CNN's C4 block: 18.5 MiB). Wider inputs get shorter blocks,
# at most this many elements (512 × 512) per tile, 128 positions the least.
_TPU_TILE_ELEMENTS = 512 * 512
# The widest rows compiled at every length tried (v5e; N = 1023 and 7056): 2048 float32 or 4096
# bfloat16 columns. float32 at 4096 overflowed VMEM at N = 7056 even at 128-position blocks.
_TPU_MAX_ROW_BYTES = 8192
_GPU_BLOCK, _GPU_BACKWARD_BLOCK = 128, 32
# The GPU kernels keep block × width tiles (width rounded up to a power of two) in shared
# memory. Compiled for an H100 (227 KiB per block; experiments/benchmarks/cuda_aot.py), tiles of
# 64 KiB were refused (float32 C = 128 at block 128 asked for 256 KiB, bfloat16 C = 256 for 320
# KiB; at Triton's smallest block, 16, float32 C = 768 and 1024 and bfloat16 C = 2048 for 256 KiB)
# and 32 KiB tiles compiled at every C and dtype tried: the default block keeps to that, and
# wider inputs are refused (`gpu_unsupported_reason`).
_GPU_TILE_BYTES = 32 * 1024
_GPU_MIN_BLOCK = 16
_block_override: list[int | None] = [None]


@contextlib.contextmanager
def block_size_override(block: int) -> Iterator[None]:
    """Within the context, the Pallas kernels traced use `block` positions per block, forward
    and backward (rounded down to a multiple of 128 on TPU, to a power of two on GPU).

    Interpret mode runs one grid step at a time, so big blocks make CPU tests fast. Read at
    trace time: re-trace (a fresh `jax.jit`) for a jitted function to see a new value.
    """
    if not (isinstance(block, int) and block >= 16):
        raise ValueError(f"block must be an integer >= 16; got {block!r}.")
    previous, _block_override[0] = _block_override[0], block
    try:
        yield
    finally:
        _block_override[0] = previous


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _pad(x: Array, length: int, width: int) -> Array:
    """Zero-pads `[B, L, C]` to `[B, length, width]`."""
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, width - x.shape[2])))


def _finish(out: Array, leading, n: int, v: Array) -> Array:
    return out[:, :n, : v.shape[-1]].reshape(*leading, n, v.shape[-1]).astype(v.dtype)


# ----------------------------------------------------------------------------------------------
# 'pallas_tpu'
# ----------------------------------------------------------------------------------------------


def _tpu_block(length: int, width: int) -> int:
    """The largest multiple of 128 that divides `length` (a multiple of 128) and is at most the
    target block: `_TPU_BLOCK`, shortened for inputs `width` wide to keep the tiles in VMEM."""
    target = _block_override[0] or max(_TPU_LANES, min(_TPU_BLOCK, _TPU_TILE_ELEMENTS // width))
    block = min(_round_up(target, _TPU_LANES), length)
    block -= block % _TPU_LANES
    while length % block:
        block -= _TPU_LANES
    return block


def tpu_unsupported_reason(q: Array, k: Array, v: Array) -> str | None:
    """Why auto-selection does not trust 'pallas_tpu' with these inputs, or None: rows wider
    than `_TPU_MAX_ROW_BYTES` were refused by Mosaic or never compiled here."""
    width = max(q.shape[-1], v.shape[-1])
    dtype = jnp.result_type(q, k, v)
    if _round_up(width, _TPU_LANES) * jnp.dtype(dtype).itemsize <= _TPU_MAX_ROW_BYTES:
        return None
    return f"{width} channels in {dtype} are wider than the TPU kernel was compiled for"


def _tpu_interpret_context(*arrays: Array):
    """Interpret mode unless compiling for a TPU (CPU tests); nothing for a TPU target."""
    if compile_platform(*arrays) == "tpu":
        return contextlib.nullcontext()
    return pltpu.force_tpu_interpret_mode()


def _tpu_kernel(q: Array, k: Array, v: Array, config) -> Array:
    """JAX's TPU flash attention on `[B, 1, L, D]` operands; `config` = (sm_scale, block_q,
    block_k, number of real keys)."""
    sm_scale, block_q, block_k, num_keys = config
    segment_ids = None
    if num_keys < k.shape[2]:
        real = (jnp.arange(k.shape[2]) < num_keys).astype(jnp.int32)
        segment_ids = tpu_attention.SegmentIds(
            q=jnp.ones((q.shape[0], q.shape[2]), jnp.int32),
            kv=jnp.broadcast_to(real, (k.shape[0], k.shape[2])),
        )
    sizes = tpu_attention.BlockSizes(
        block_q=block_q,
        block_k_major=block_k,
        block_k=block_k,
        block_b=1,
        block_q_major_dkv=block_q,
        block_k_major_dkv=block_k,
        block_k_dkv=block_k,
        block_q_dkv=block_q,
        block_k_major_dq=block_k,
        block_k_dq=block_k,
        block_q_dq=block_q,
    )
    return tpu_attention.flash_attention(
        q, k, v, segment_ids=segment_ids, sm_scale=sm_scale, block_sizes=sizes
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _tpu_call(q: Array, k: Array, v: Array, config) -> Array:
    with _tpu_interpret_context(q, k, v):
        return _tpu_kernel(q, k, v, config)


def _tpu_call_fwd(q, k, v, config):
    with _tpu_interpret_context(q, k, v):
        out, vjp = jax.vjp(functools.partial(_tpu_kernel, config=config), q, k, v)
    return out, vjp


def _tpu_call_bwd(config, vjp, d_out):
    with _tpu_interpret_context(d_out):
        return vjp(d_out)


_tpu_call.defvjp(_tpu_call_fwd, _tpu_call_bwd)


def _batch_split_axes(batch: int) -> tuple[tuple[str, ...], frozenset[str]]:
    """(axes that split the kernel's batch, all automatically sharded axes) of the mesh in
    context: every non-manual axis (size-1 ones too: Mosaic wants a fully manual context) is
    made manual around the Mosaic call; the batch goes over those of size > 1 whose product
    divides it, in mesh order (the rest replicate it)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return (), frozenset()
    auto, split, product = [], [], 1
    for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types, strict=True):
        if kind == AxisType.Manual:
            continue
        auto.append(name)
        if size > 1 and batch % (product * size) == 0:
            split.append(name)
            product *= size
    return tuple(split), frozenset(auto)


def _tpu_call_on_mesh(q: Array, k: Array, v: Array, config) -> Array:
    """`_tpu_call`, inside a shard_map over the batch when a mesh shards automatically."""
    split, auto = _batch_split_axes(q.shape[0])
    if not auto:
        return _tpu_call(q, k, v, config)
    spec = P(split or None)
    return jax.shard_map(
        lambda q, k, v: _tpu_call(q, k, v, config),
        in_specs=(spec, spec, spec),
        out_specs=spec,
        axis_names=auto,
        check_vma=False,
    )(q, k, v)


def tpu_flash_attention(q: Array, k: Array, v: Array, *, scale, whiten: bool = True) -> Array:
    """Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j with JAX's Pallas TPU flash attention.

    Shapes as `chunked.chunked_attention` (any N, M, C, Cv; leading axes broadcast). Interpret
    mode off TPUs. Returns `[..., N, Cv]` in the dtype of `v`.
    """
    leading, q3, k3, v3, sm_scale = chunked.prepare(q, k, v, scale, whiten)
    n, m = q3.shape[1], k3.shape[1]
    width = max(q3.shape[2], v3.shape[2])
    if width > _TPU_LANES:
        width = _round_up(width, _TPU_LANES)  # the kernel's rule for head dims above 128
    q_len, k_len = _round_up(n, _TPU_LANES), _round_up(m, _TPU_LANES)
    config = (sm_scale, _tpu_block(q_len, width), _tpu_block(k_len, width), m)
    out = _tpu_call_on_mesh(
        _pad(q3, q_len, width)[:, None],
        _pad(k3, k_len, width)[:, None],
        _pad(v3, k_len, width)[:, None],
        config,
    )
    return _finish(out[:, 0], leading, n, v)


# ----------------------------------------------------------------------------------------------
# 'pallas_gpu'
# ----------------------------------------------------------------------------------------------


def _power_of_two_at_most(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def _gpu_tile_width(q: Array, k: Array, v: Array) -> int:
    """The widest operand's channels, plus the mask-bias channel N != M may add
    (`_mask_bias_channel`), rounded up to a power of two."""
    width = max(q.shape[-1], v.shape[-1]) + (q.shape[-2] != k.shape[-2])
    return 1 << (width - 1).bit_length()


def gpu_unsupported_reason(q: Array, k: Array, v: Array) -> str | None:
    """Why 'pallas_gpu' cannot be compiled for these inputs on a GPU, or None if it can: even
    its smallest block (16 positions) of the widest operand must fit `_GPU_TILE_BYTES` of shared
    memory (float32: C <= 512, bfloat16: C <= 1024; one less when N != M)."""
    width, itemsize = _gpu_tile_width(q, k, v), jnp.dtype(jnp.result_type(q, k, v)).itemsize
    if _GPU_MIN_BLOCK * width * itemsize <= _GPU_TILE_BYTES:
        return None
    return (
        f"{max(q.shape[-1], v.shape[-1])} channels in {jnp.result_type(q, k, v)} need more "
        "shared memory per block than an H100 has, even at the smallest block"
    )


def _gpu_blocks(length: int, width: int = 1, itemsize: int = 4) -> tuple[int, int]:
    """(forward, backward) block lengths: powers of two >= 16, at most the padded length; by
    default at most `_GPU_TILE_BYTES` per tile of `width` channels (rounded up to a power of
    two) of `itemsize` bytes."""
    target = _block_override[0]
    tile_rows = _GPU_TILE_BYTES // (itemsize << (max(width, 1) - 1).bit_length())
    forward = _power_of_two_at_most(target or min(_GPU_BLOCK, max(_GPU_MIN_BLOCK, tile_rows)))
    backward = _power_of_two_at_most(target or _GPU_BACKWARD_BLOCK)
    reach = max(16, 1 << (length - 1).bit_length())  # next power of two >= length
    return min(forward, reach), min(backward, forward, reach)


def _mask_bias_channel(q: Array, k: Array, v: Array, num_keys: int):
    """Appends a ones channel to q and a 0 / −X channel to k (−X on padded keys), and a zero
    channel to v if needed for equal widths: the logit of a padded key becomes −X · scale."""
    big = min(1e30, float(jnp.finfo(k.dtype).max) / 4)
    real = jnp.arange(k.shape[1]) < num_keys
    key_bias = jnp.where(real, 0.0, -big).astype(k.dtype)
    q = jnp.concatenate([q, jnp.ones((*q.shape[:2], 1), q.dtype)], axis=-1)
    k = jnp.concatenate([k, jnp.broadcast_to(key_bias[None, :, None], (*k.shape[:2], 1))], axis=-1)
    return q, k, v


def gpu_flash_attention(q: Array, k: Array, v: Array, *, scale, whiten: bool = True) -> Array:
    """Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j with JAX's Pallas GPU (Triton) flash attention.

    Shapes as `chunked.chunked_attention` (any N, M, C, Cv; leading axes broadcast). Queries and
    keys are padded to one length L (the kernel's fused backward pass wants as many query as key
    blocks). Interpret mode off GPUs. float32 matmuls follow Triton's default (TF32 on Ampere and
    newer, like XLA's default for float32 on those GPUs). Returns `[..., N, Cv]` in v's dtype.
    """
    interpret = compile_platform(q, k, v) != "gpu"
    reason = None if interpret else gpu_unsupported_reason(q, k, v)
    if reason is not None:
        raise ValueError(
            f"implementation='pallas_gpu' cannot compile these inputs: {reason}. Use "
            "implementation='chunked' (exact, O(N) memory) or None to choose automatically."
        )
    leading, q3, k3, v3, sm_scale = chunked.prepare(q, k, v, scale, whiten)
    n, m = q3.shape[1], k3.shape[1]
    tile_width = _gpu_tile_width(q3, k3, v3)
    forward, backward = _gpu_blocks(max(n, m), tile_width, jnp.dtype(q3.dtype).itemsize)
    length = _round_up(max(n, m), forward)
    segment_ids = None
    if length != m and n == m:
        real = (jnp.arange(length) < m).astype(jnp.int32)
        segment_ids = jnp.broadcast_to(real, (q3.shape[0], length))
    q3, k3, v3 = (_pad(x, length, x.shape[2]) for x in (q3, k3, v3))
    if length != m and n != m:
        q3, k3, v3 = _mask_bias_channel(q3, k3, v3, m)
    width = max(q3.shape[2], v3.shape[2])
    q4, k4, v4 = (_pad(x, length, width)[:, :, None] for x in (q3, k3, v3))
    sizes = gpu_attention.BlockSizes(
        block_q=forward,
        block_k=forward,
        block_q_dkv=backward,
        block_kv_dkv=backward,
        block_q_dq=backward,
        block_kv_dq=backward,
    )
    call = functools.partial(
        gpu_attention.mha, sm_scale=sm_scale, block_sizes=sizes, interpret=interpret
    )
    out = _gpu_call_on_mesh(call, q4, k4, v4, segment_ids, interpret)
    return _finish(out[:, :, 0], leading, n, v)


def _gpu_call_on_mesh(call, q: Array, k: Array, v: Array, segment_ids, interpret: bool):
    """`call(q, k, v, segment_ids)` (the Triton kernel on `[B, L, 1, D]`), inside a shard_map
    over the batch when compiling for a GPU under a mesh that shards automatically. XLA cannot
    partition a Triton kernel either, and unlike Mosaic it does not refuse: it all-gathers q, k
    and v and runs the whole batch on every GPU (found by the deviceless H100 compile of the jit
    driver's step, experiments/benchmarks/cuda_aot.py)."""
    split, auto = _batch_split_axes(q.shape[0])
    if interpret or not auto:
        return call(q, k, v, segment_ids)
    spec = P(split or None)
    if segment_ids is None:
        return jax.shard_map(
            lambda q, k, v: call(q, k, v, None),
            in_specs=(spec, spec, spec),
            out_specs=spec,
            axis_names=auto,
            check_vma=False,
        )(q, k, v)
    return jax.shard_map(
        call, in_specs=(spec,) * 4, out_specs=spec, axis_names=auto, check_vma=False
    )(q, k, v, segment_ids)
