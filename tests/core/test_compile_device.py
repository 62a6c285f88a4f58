"""The compute capability that kernel choice uses comes from the GPU being compiled for.

A deviceless compile for an H100 (experiments/benchmarks/cuda_aot.py) runs on a CPU host inside
`jax.set_mesh(mesh over compile-only H100 devices)`. Those devices are JAX objects with
`platform == 'gpu'` and `compute_capability == '9.0'`; this venv has no CUDA plugin to make them,
so a stand-in object with those attributes plays the device in a real `Mesh` and `jax.set_mesh`
(the path the trainer's jit driver takes). The real compile-only devices are checked in the
CUDA AOT venv by cuda_aot.py (its kernel rows record what auto-selection picked).

Also here: the Pallas GPU kernel's default forward block, sized so that its shared memory fits an
H100 (the deviceless compile refused the old default at C >= 128 in float32).
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from dnl_jax.core import attention
from dnl_jax.core.attention import pallas as pallas_attention
from dnl_jax.core.target_platform import compile_device, compile_platform


@dataclass(frozen=True)
class StandInDevice:
    """The attributes of a compile-only GPU device that the code under test reads."""

    compute_capability: str
    device_kind: str = "NVIDIA H100 80GB HBM3"
    platform: str = "gpu"
    id: int = 0
    process_index: int = 0


def _mesh(device) -> Mesh:
    return Mesh(np.array([device]), ("data",), axis_types=(AxisType.Auto,))


H100 = StandInDevice("9.0")
A100 = StandInDevice("8.0", device_kind="NVIDIA A100-SXM4-80GB")
MI250 = StandInDevice("gfx90a", device_kind="AMD Instinct MI250X")  # ROCm names its arch


def _spec(n, channels=64, dtype=jnp.float32):
    return jax.ShapeDtypeStruct((1, n, channels), dtype)


def test_the_mesh_device_is_found_inside_and_outside_jit():
    seen = []
    with jax.set_mesh(_mesh(H100)):
        assert compile_platform() == "gpu"
        assert compile_device() is H100
        jax.jit(lambda x: seen.append(compile_device(x)) or x).trace(_spec(8))
    assert seen == [H100]
    # Nothing left behind: on this CPU host the target is the host's own first device.
    assert compile_device() == jax.devices()[0]


def test_compute_capability_follows_the_target_gpu():
    q = _spec(4096)
    with jax.set_mesh(_mesh(H100)):
        assert attention._nvidia_compute_capability(q) == (9, 0)
    with jax.set_mesh(_mesh(A100)):
        assert attention._nvidia_compute_capability(q) == (8, 0)
    with jax.set_mesh(_mesh(MI250)):
        assert attention._nvidia_compute_capability(q) is None
    assert attention._nvidia_compute_capability(q) is None  # the CPU host


@pytest.mark.parametrize(
    "n, channels, dtype, on_h100, on_a100",
    [
        (4096, 64, jnp.bfloat16, "cudnn", "cudnn"),
        (1023, 64, jnp.bfloat16, "cudnn", "cudnn"),  # cuDNN first, at any length
        (4096, 256, jnp.bfloat16, "cudnn", "pallas_gpu"),  # C = 256: Hopper's cuDNN only
        (4096, 264, jnp.bfloat16, "pallas_gpu", "pallas_gpu"),  # above cuDNN's head-dim limit
        (4096, 64, jnp.float32, "pallas_gpu", "pallas_gpu"),  # cuDNN wants bf16 / f16
        (1023, 64, jnp.float32, "xla", "xla"),  # N · M <= 2**20: materialise
    ],
)
def test_auto_selection_is_what_the_real_gpu_host_would_pick(n, channels, dtype, on_h100, on_a100):
    spec = _spec(n, channels, dtype)
    picks = []
    for device in (H100, A100):
        with jax.set_mesh(_mesh(device)):
            picks.append(attention.select_implementation(spec, spec, spec))
    assert picks == [on_h100, on_a100]
    # The CPU host itself picks neither GPU kernel.
    assert attention.select_implementation(spec, spec, spec) in ("xla", "chunked")


def test_the_choice_inside_a_jitted_trace_matches():
    spec = _spec(4096, 64, jnp.bfloat16)
    picks = []

    def record(q):
        picks.append(attention.select_implementation(q, q, q))
        return q

    with jax.set_mesh(_mesh(H100)):
        jax.jit(record).trace(spec)
    assert picks == ["cudnn"]


def test_rocm_gets_no_nvidia_kernel():
    spec = _spec(4096, 64, jnp.bfloat16)
    with jax.set_mesh(_mesh(MI250)):
        reason = attention.cudnn_unsupported_reason(spec, spec, spec)
        assert reason is not None and "NVIDIA GPU" in reason
        assert attention.select_implementation(spec, spec, spec) == "chunked"


def test_an_abstract_gpu_mesh_alone_names_no_device():
    # `use_abstract_mesh` says 'gpu' but holds no device to ask: no capability is invented.
    abstract = jax.make_mesh((1,), ("data",)).abstract_mesh
    device = type(abstract.abstract_device)(
        device_kind=H100.device_kind, num_cores=None, platform="gpu"
    )
    gpu_mesh = jax.sharding.AbstractMesh((1,), ("data",), abstract_device=device)
    spec = _spec(4096)
    with jax.sharding.use_abstract_mesh(gpu_mesh):
        assert compile_platform(spec) == "gpu"
        assert compile_device(spec) is None
        assert attention._nvidia_compute_capability(spec) is None
    # A concrete mesh of another device kind does not answer for it either.
    with jax.set_mesh(_mesh(A100)), jax.sharding.use_abstract_mesh(gpu_mesh):
        assert compile_device(spec) is None


@pytest.mark.parametrize(
    "width, itemsize, forward",
    [
        (64, 4, 128),  # float32 C = 64: 32 KiB tiles at JAX's default block
        (128, 4, 64),  # float32 C = 128: block 128 asked an H100 for 256 KiB of shared memory
        (256, 4, 32),
        (65, 4, 64),  # a mask-bias channel rounds the width up to 128
        (128, 2, 128),
        (256, 2, 64),  # bfloat16 C = 256: block 128 asked for 320 KiB
        (4096, 4, 16),  # never below Triton's smallest block
    ],
)
def test_gpu_forward_blocks_fit_shared_memory(width, itemsize, forward):
    # The refused sizes are the deviceless H100 compile's (experiments/benchmarks/cuda_aot.py);
    # the kernel grid there compiles every C and dtype with these blocks.
    assert pallas_attention._gpu_blocks(8192, width, itemsize) == (forward, min(32, forward))
    # An explicit block (CPU tests' interpret mode) and short inputs are left as they were.
    with pallas_attention.block_size_override(256):
        assert pallas_attention._gpu_blocks(8192, width, itemsize) == (256, 256)
    assert pallas_attention._gpu_blocks(40, width, itemsize)[0] == min(64, forward)


@pytest.mark.parametrize(
    "channels, keys, dtype, expected",
    [
        (512, 4096, jnp.float32, "pallas_gpu"),  # 16 × 512 × 4 B = 32 KiB tiles: compiles
        (512, 1024, jnp.float32, "chunked"),  # N != M adds a channel: 1024 wide
        (1024, 4096, jnp.float32, "chunked"),  # an H100 refused it at every block
        (1024, 4096, jnp.bfloat16, "pallas_gpu"),  # cuDNN refuses C > 256; 32 KiB tiles
        (2048, 4096, jnp.bfloat16, "chunked"),
    ],
)
def test_auto_selection_skips_pallas_gpu_where_its_tiles_overflow(channels, keys, dtype, expected):
    q = _spec(4096, channels, dtype)
    k = _spec(keys, channels, dtype)
    with jax.set_mesh(_mesh(H100)):
        assert attention.select_implementation(q, k, k) == expected


def test_named_pallas_gpu_too_wide_for_a_gpu_is_one_clear_error():
    q = _spec(64, 1024)
    unary = jax.ShapeDtypeStruct((1, 64), jnp.float32)

    def attend(q, unary):
        return attention.dnl_attention(q, q, q, unary, implementation="pallas_gpu")

    with jax.set_mesh(_mesh(H100)), pytest.raises(ValueError, match="'chunked'"):
        jax.eval_shape(attend, q, unary)
    # Interpreted (off a GPU) any width runs: the limit is the GPU's shared memory.
    assert jax.eval_shape(attend, q, unary).shape == (1, 64, 1024)


def test_the_gpu_kernel_runs_per_shard_under_a_data_mesh():
    # XLA cannot partition a Triton call: without the shard_map it all-gathers q, k and v and
    # runs the whole batch on every GPU (the deviceless H100 compile of the jit driver's step).
    gpus = [StandInDevice("9.0", id=i) for i in range(2)]
    mesh = Mesh(np.array(gpus), ("data",), axis_types=(AxisType.Auto,))
    q = jax.ShapeDtypeStruct((2, 4096, 64), jnp.float32)

    def loss(q):
        return attention.dnl_attention(q, q, q, implementation="pallas_gpu").sum()

    with jax.set_mesh(mesh):
        jaxpr = str(jax.jit(jax.grad(loss)).trace(q).jaxpr)
    assert "shard_map" in jaxpr and "interpret=False" in jaxpr
    # Off a GPU (interpreted) the call is left as it was.
    assert "shard_map" not in str(jax.jit(jax.grad(loss)).trace(q).jaxpr)
