"""Kernel choice follows the platform the computation is compiled for, not the host's backend.

No libtpu needed: an abstract mesh whose device is a TPU (what `jax.set_mesh` on a mesh of TPU
topology devices puts in context) is enough for the trace, and JAX lowers a traced function for
'tpu' on a CPU host. The compiled TPU programs are checked in the AOT venv
(tests/core/test_tpu_aot.py)."""

import contextlib
import re

import jax
import jax.numpy as jnp
import pytest

from dnl_jax.core import attention
from dnl_jax.core.attention import pallas as pallas_attention
from dnl_jax.core.target_platform import compile_platform
from dnl_jax.train import parallel

# The class of `Mesh.abstract_mesh.abstract_device`, reached without a private import.
AbstractDevice = type(jax.make_mesh((1,), ("d",)).abstract_mesh.abstract_device)


def _tpu_mesh(size=1):
    """An abstract ('data',) mesh of `size` TPU v5e chips."""
    device = AbstractDevice(device_kind="TPU v5 lite", num_cores=None, platform="tpu")
    return jax.sharding.AbstractMesh((size,), ("data",), abstract_device=device)


def _attention_grad(implementation):
    def loss(q):
        return attention.dnl_attention(q, q, q, implementation=implementation).sum()

    return jax.jit(jax.grad(loss))


def test_without_a_mesh_the_host_backend_decides():
    assert compile_platform() == jax.default_backend() == "cpu"
    assert compile_platform(jax.ShapeDtypeStruct((2,), jnp.float32)) == "cpu"


def test_a_tpu_mesh_in_context_decides_inside_and_outside_jit():
    seen = []
    with jax.sharding.use_abstract_mesh(_tpu_mesh()):
        assert compile_platform(jnp.ones(3)) == "tpu"  # the mesh outranks the array's CPU device
        jax.jit(lambda x: seen.append(compile_platform(x)) or x).trace(jnp.ones(3))
    assert seen == ["tpu"]
    assert compile_platform() == "cpu"  # and nothing is left behind


def test_concrete_arrays_name_their_devices():
    x = jax.device_put(jnp.ones(4), jax.devices("cpu")[1])
    assert compile_platform(x) == "cpu"


def test_the_trainer_mesh_context_is_what_decides(monkeypatch):
    # The jit driver runs the step inside `jax.set_mesh(make_mesh(...))`: its devices' platform
    # reaches the trace. Pretending the host is a GPU shows the mesh, not the backend, answers.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with jax.set_mesh(parallel.make_mesh()):
        assert compile_platform() == "cpu"
    assert compile_platform() == "gpu"


@pytest.mark.parametrize(
    "n, dtype, expected",
    [
        (4096, jnp.bfloat16, "pallas_tpu"),
        (4096, jnp.float32, "pallas_tpu"),
        (1023, jnp.float32, "xla"),
    ],
)
def test_auto_selection_under_a_tpu_mesh(n, dtype, expected):
    spec = jax.ShapeDtypeStruct((2, n, 64), dtype)
    with jax.sharding.use_abstract_mesh(_tpu_mesh()):
        assert attention.select_implementation(spec, spec, spec) == expected
    assert attention.select_implementation(spec, spec, spec) in ("chunked", "xla")


def _interpret_params(jaxpr) -> set[str]:
    return set(re.findall(r"interpret=(\w+)", str(jaxpr)))


def test_tpu_lowering_from_a_cpu_host_gets_the_mosaic_kernels():
    q = jax.ShapeDtypeStruct((1, 2048, 64), jnp.float32)
    with jax.sharding.use_abstract_mesh(_tpu_mesh()):
        traced = _attention_grad(None).trace(q)
    # Forward, dq and dk/dv: three Mosaic kernels, none of them interpreted.
    assert _interpret_params(traced.jaxpr) == {"False"}
    text = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3


def test_off_a_tpu_target_the_kernel_is_interpreted():
    q = jax.ShapeDtypeStruct((1, 1024, 64), jnp.float32)
    traced = _attention_grad("pallas_tpu").trace(q)
    assert _interpret_params(traced.jaxpr) == {"InterpretParams"}
    assert "tpu_custom_call" not in traced.lower().as_text()


def test_interpret_context_follows_the_mesh():
    with jax.sharding.use_abstract_mesh(_tpu_mesh()):
        assert isinstance(pallas_attention._tpu_interpret_context(), contextlib.nullcontext)
    assert not isinstance(pallas_attention._tpu_interpret_context(), contextlib.nullcontext)
