"""Disentangled non-local attention (`dnl_attention`) and the kernels for its pairwise term.

All kernels compute the same quantity as the materialised 'xla' path,

    out_i = Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j,  q̂ = q − μ_q, k̂ = k − μ_k (or q, k unwhitened)

with q `[..., N, C]`, k `[..., M, C]`, v `[..., M, Cv]` → `[..., N, Cv]`:

- 'xla': `ops.materialised_pairwise_attention`, the `[..., N, M]` logits formed (O(N · M) memory).
- 'chunked': `chunked.chunked_attention`, exact attention over query × key blocks with an online
  softmax and a recomputing custom VJP: O(N + M) memory in both passes.
- 'cudnn': `jax.nn.dot_product_attention(implementation='cudnn')` (cuDNN's fused flash kernel) on
  NVIDIA GPUs, for bfloat16/float16 inputs; any N and M (padded to a multiple of 128, the
  padding masked through `query_seq_lengths` / `key_value_seq_lengths`).
- 'pallas_tpu', 'pallas_gpu': JAX's Pallas flash-attention kernels (`pallas`) for TPUs and
  for GPUs where cuDNN cannot run (float32, head dims cuDNN refuses); any shapes.
  Off their platform they run in Pallas interpret mode (slow; for tests).
- None (auto): `select_implementation` picks one from the platform, shapes and dtype; the choice is
  logged once per distinct case at DEBUG level (`logging`), so it stays out of progress output.
  The platform is the one the computation is compiled for (`dnl_jax.core.target_platform`: the mesh
  in context, else the inputs' devices, else the default backend), so an ahead-of-time compile
  for a TPU topology from a CPU host gets the TPU kernels, and one for a compile-only H100 (whose
  compute capability `target_platform.compile_device` finds) gets the H100's.

The names map to functions in one table, `KERNELS`: a new kernel is one module in this package
(`dnl_jax/core/attention/`) and one line there. `sharded` runs these kernels with the positions
split over the mesh's 'space' axis.

Whitening and scaling run in at least float32 and the result is cast back to the input dtype, so
bfloat16 inputs feed bfloat16 matmuls that accumulate in float32 (`preferred_element_type`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dnl_jax.core import ops
from dnl_jax.core.attention import chunked, pallas
from dnl_jax.core.target_platform import compile_device, compile_platform

Array = jax.Array

logger = logging.getLogger(__name__)

# Below this many logits per sample the materialised matrix is small (4 MiB in float32) and one
# big fused matmul + softmax beats a loop of blocks.
_MATERIALISE_MAX_LOGITS = 1024 * 1024


# ----------------------------------------------------------------------------------------------
# 'cudnn': cuDNN's fused flash attention through jax.nn.dot_product_attention.
# ----------------------------------------------------------------------------------------------

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
# cuDNN rejects some sequence lengths (N = 1023 on an H200); padded lengths are multiples of this.
_CUDNN_LENGTH_MULTIPLE = 128


def platform(*arrays: Array) -> str:
    """The platform kernels are chosen for ('cpu', 'gpu', 'tpu'): the one the computation is
    compiled for (`target_platform.compile_platform`: mesh in context, else the devices of
    `arrays`, else JAX's default backend)."""
    return compile_platform(*arrays)


def _nvidia_compute_capability(*arrays: Array) -> tuple[int, ...] | None:
    """The CUDA compute capability of the NVIDIA GPU the computation is compiled for: a local
    GPU, or a compile-only one (deviceless AOT, e.g. experiments/benchmarks/cuda_aot.py), found
    by `target_platform.compile_device`. None off GPUs, on ROCm (its devices name a gfx
    architecture, not major.minor) or when only an abstract mesh names the GPU."""
    device = compile_device(*arrays)
    if device is None or device.platform != "gpu":
        return None
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    capability = str(getattr(device, "compute_capability", ""))
    if "rocm" in version or not re.fullmatch(r"\d+\.\d+", capability):
        return None
    return tuple(int(part) for part in capability.split("."))


def cudnn_unsupported_reason(q: Array, k: Array, v: Array) -> str | None:
    """Why the cuDNN kernel cannot run these inputs here, or None if it can.

    cuDNN flash attention wants an NVIDIA GPU, bfloat16/float16 operands and a head dim (C) that is
    a multiple of 8 and <= 128 (<= 256 from Hopper, compute capability 9.0), with Cv == C. Any N
    and M: `cudnn_attention` pads them.
    """
    capability = _nvidia_compute_capability(q, k, v)
    if capability is None:
        return f"it needs an NVIDIA GPU (compiling for: {platform(q, k, v)!r})"
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
    single head, `[B, T, 1, C]`. cuDNN rejects some lengths (e.g. N = 1023), so N and M that are
    not multiples of 128 are zero-padded to one and the padding is masked by passing the true
    lengths as `query_seq_lengths` / `key_value_seq_lengths`. The scale goes to cuDNN's `scale`
    (applied to float32 logits) when static, else it is folded into the queries.

    Raises:
      ValueError: where cuDNN cannot run (CPU/TPU, float32 inputs, unsupported C); the message
        says why and what to use instead.
    """
    reason = cudnn_unsupported_reason(q, k, v)
    if reason is not None:
        raise ValueError(
            f"implementation='cudnn' is unavailable: {reason}. Use implementation='pallas_gpu' "
            "or 'chunked' (exact, O(N) memory, any platform) or None to choose automatically."
        )
    leading, q3, k3, v3, sm_scale = chunked.prepare(q, k, v, scale, whiten)
    n, m = q3.shape[1], k3.shape[1]
    # The true lengths when padded to the cuDNN multiple; None (the default) when not.
    query_lengths: Array | None = None
    key_lengths: Array | None = None
    if n % _CUDNN_LENGTH_MULTIPLE or m % _CUDNN_LENGTH_MULTIPLE:
        batch = q3.shape[0]
        query_lengths = jnp.full((batch,), n, jnp.int32)
        key_lengths = jnp.full((batch,), m, jnp.int32)

        def pad(x):
            return jnp.pad(x, ((0, 0), (0, -x.shape[1] % _CUDNN_LENGTH_MULTIPLE), (0, 0)))

        q3, k3, v3 = pad(q3), pad(k3), pad(v3)
    out = jax.nn.dot_product_attention(
        q3[:, :, None],
        k3[:, :, None],
        v3[:, :, None],
        scale=sm_scale,
        implementation="cudnn",
        query_seq_lengths=query_lengths,
        key_value_seq_lengths=key_lengths,
    )
    return out[:, :n, 0].reshape(*leading, n, v.shape[-1]).astype(v.dtype)


# ----------------------------------------------------------------------------------------------
# Automatic choice and dispatch.
# ----------------------------------------------------------------------------------------------

_logged_choices: set = set()


def select_implementation(q: Array, k: Array, v: Array) -> str:
    """The kernel `implementation=None` uses for these inputs.

    - 'cudnn' where `cudnn_unsupported_reason` finds nothing (NVIDIA GPU, bf16/f16, C supported);
    - 'xla' when the logits are small (N · M <= 2**20 per sample): the materialised matrix is
      then a few MiB and one fused matmul + softmax is fastest;
    - above that, the platform's flash kernel: 'pallas_tpu' on TPUs (up to the widths compiled
      for a v5e: `pallas.tpu_unsupported_reason`), 'pallas_gpu' on NVIDIA GPUs (float32, head
      dims cuDNN refuses, up to the widths whose tiles fit shared memory:
      `pallas.gpu_unsupported_reason`), and 'chunked' elsewhere (CPU, wider inputs): exact,
      O(N + M) memory.

    All of them meet the bfloat16 accuracy bound (at most twice the error that rounding q, k, v
    to bfloat16 alone causes) at temperatures 0.05 and 1, measured by
    `experiments/benchmarks/bf16_accuracy.py` and tested, so the choice does not depend on the
    temperature. Only static information (shapes, dtypes, target platform) is used, so this works on
    tracers.
    """
    if cudnn_unsupported_reason(q, k, v) is None:
        choice = "cudnn"
    elif q.shape[-2] * k.shape[-2] <= _MATERIALISE_MAX_LOGITS:
        choice = "xla"
    elif platform(q, k, v) == "tpu" and pallas.tpu_unsupported_reason(q, k, v) is None:
        choice = "pallas_tpu"
    elif (
        _nvidia_compute_capability(q, k, v) is not None
        and pallas.gpu_unsupported_reason(q, k, v) is None
    ):
        choice = "pallas_gpu"
    else:
        choice = "chunked"
    key = (platform(q, k, v), q.shape, k.shape, v.shape, str(jnp.result_type(q, k, v)), choice)
    if key not in _logged_choices:
        _logged_choices.add(key)
        logger.debug(
            "dnl attention: implementation=None chose %r for q%s k%s v%s %s on %s.",
            choice,
            q.shape,
            k.shape,
            v.shape,
            key[4],
            key[0],
        )
    return choice


# ----------------------------------------------------------------------------------------------
# The kernel table. A new kernel is one module in dnl_jax/core/attention/ and one line here.
# ----------------------------------------------------------------------------------------------


class Kernel(NamedTuple):
    """One implementation of the pairwise term: `function(q, k, v, *, scale, whiten)` →
    Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j `[..., N, Cv]`, shapes as `dnl_attention`."""

    function: Callable[..., Array]
    # The kernel to use instead, with a warning, when `implementation=None` chose this one and it
    # rejects the inputs at trace time (NotImplementedError); None: the error propagates.
    fallback: str | None = None


KERNELS: dict[str, Kernel] = {
    "xla": Kernel(ops.materialised_pairwise_attention),
    "chunked": Kernel(chunked.chunked_attention),
    # cuDNN refuses shapes `cudnn_unsupported_reason` cannot foresee; Pallas is the other fast one.
    "cudnn": Kernel(cudnn_attention, fallback="pallas_gpu"),
    "pallas_tpu": Kernel(pallas.tpu_flash_attention),
    "pallas_gpu": Kernel(pallas.gpu_flash_attention),
}
# What `implementation=` accepts: None picks a kernel (`select_implementation`).
IMPLEMENTATIONS = (None, *KERNELS)


def pairwise_attention(
    q: Array, k: Array, v: Array, *, scale, whiten: bool, implementation: str | None
) -> Array:
    """Σ_j softmax_j(scale · q̂_iᵀk̂_j) v_j with the kernel `KERNELS[implementation]`; None =
    `select_implementation`.

    With None, a kernel's rejection at trace time goes to its table `fallback` with a warning
    (cuDNN's, for a constraint `cudnn_unsupported_reason` does not know: 'pallas_gpu'); a named
    kernel never changes.
    """
    automatic = implementation is None
    if automatic:
        implementation = select_implementation(q, k, v)
    if implementation not in KERNELS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; choose one of "
            f"{(None, *KERNELS)}."
        )
    kernel = KERNELS[implementation]
    if not automatic or kernel.fallback is None:
        return kernel.function(q, k, v, scale=scale, whiten=whiten)
    try:
        return kernel.function(q, k, v, scale=scale, whiten=whiten)
    except NotImplementedError as error:
        logger.warning(
            "dnl attention: %r rejected q%s (%s); using %r.",
            implementation,
            q.shape,
            error,
            kernel.fallback,
        )
        return KERNELS[kernel.fallback].function(q, k, v, scale=scale, whiten=whiten)


# ----------------------------------------------------------------------------------------------
# The block's attention: pairwise term (a kernel above) + unary term (ops).
# ----------------------------------------------------------------------------------------------


def pairwise_logit_scale(
    q: Array, k: Array, v: Array, *, temperature: float, scale: float | None
) -> float:
    """The factor of the pairwise logits, `scale / temperature` (`scale` None: 1/√C), after
    checking q `[..., N, C]`, k `[..., M, C]` and v `[..., M, Cv]` against each other and
    `temperature` > 0 (ValueError otherwise). Shared by `dnl_attention` and its sharded twin."""
    ops.check_query_key(q, k)
    ops.check_key_value(k, v)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")
    return (q.shape[-1] ** -0.5 if scale is None else scale) / temperature


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
) -> Array:
    """Disentangled non-local attention.

        out_i = Σ_j softmax_j(scale · (q_i − μ_q)ᵀ(k_j − μ_k) / temperature) v_j
              + Σ_j softmax_j(unary_j) v_j

    Args:
      q: queries `[..., N, C]`.
      k: keys `[..., M, C]`.
      v: values `[..., M, Cv]`.
      unary: unary logits `[..., M]`, or None for the pairwise term alone.
      temperature: divides the pairwise logits; must be > 0 (the paper uses 0.05).
      scale: multiplies the pairwise logits; None means 1/√C.
      whiten: subtract μ_q and μ_k in the pairwise term (False gives plain non-local logits).
      implementation: None (pick automatically: `select_implementation`), 'xla' (materialises
        the N × M matrix), 'chunked' (exact, O(N + M) memory forward and backward), 'cudnn'
        (NVIDIA GPUs, bfloat16/float16), 'pallas_tpu' or 'pallas_gpu' (flash attention;
        interpreted, slowly, off their platform).

    Returns:
      `[..., N, Cv]` in the dtype of `v`.
    """
    scale = pairwise_logit_scale(q, k, v, temperature=temperature, scale=scale)
    pairwise = pairwise_attention(
        q, k, v, scale=scale, whiten=whiten, implementation=implementation
    )
    if unary is None:
        return pairwise
    # The sum in >= float32: the unary output broadcasts over all N queries, so its gradient sums
    # N cotangents; in bfloat16 that sum (and the extra rounding of the unary output) tripled the
    # error of dunary and doubled dv's at N = 4096 (bf16_accuracy.py, RESULTS.md).
    compute_dtype = jnp.promote_types(v.dtype, jnp.float32)
    unary_out = ops.unary_attention(unary, v.astype(compute_dtype))
    return (pairwise.astype(compute_dtype) + unary_out).astype(v.dtype)
