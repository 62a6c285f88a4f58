"""The accelerator kernels ('pallas_tpu', 'pallas_gpu', the padded 'cudnn' path) on CPU, in Pallas
interpret mode: equal to 'xla' in float32, within twice the bfloat16 floor in bfloat16, and chosen
by platform (monkeypatched backends)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax.core import attention
from dnl_jax.core.attention import pallas as pallas_attention

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "experiments",
        "benchmarks",
    ),
)
import bf16_accuracy  # noqa: E402

PALLAS = ("pallas_tpu", "pallas_gpu")
# Interpret mode runs one grid step at a time: big blocks keep N = 4096 to seconds.
BLOCK = 2048


def _spatial_inputs(batch, query_grid, key_grid, c, cv, seed=0, key_mean=1.0):
    """q, k, v, unary of a block over a 2-D or 3-D grid, positions flattened: q `[B, N, C]`
    with N = prod(query_grid), k and v over `key_grid` (sub-sampled keys). The keys get a mean
    offset, as real features have, which whitening must remove."""
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(keys[0], (batch, *query_grid, c))
    y = jax.random.normal(keys[1], (batch, *key_grid, c)) + key_mean
    z = jax.random.normal(keys[2], (batch, *key_grid, cv))
    m = int(np.prod(key_grid))
    unary = jax.random.normal(keys[3], (batch, m))
    return x.reshape(batch, -1, c), y.reshape(batch, m, c), z.reshape(batch, m, cv), unary


def _output_and_grads(implementation, args, whiten, temperature=0.3):
    def loss(q, k, v, unary):
        out = attention.dnl_attention(
            q, k, v, unary, temperature=temperature, whiten=whiten, implementation=implementation
        )
        return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

    with pallas_attention.block_size_override(BLOCK):
        grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(*args)
    return [np.asarray(x, np.float64) for x in (out, *grads)]


def _assert_relative_close(results, reference, tolerance):
    errors = bf16_accuracy.relative_errors(results, reference)
    assert max(errors) <= tolerance, dict(zip(bf16_accuracy.QUANTITIES, errors, strict=False))


@pytest.mark.parametrize("kernel", PALLAS)
@pytest.mark.parametrize(
    "query_grid, key_grid, c, cv, whiten",
    [
        ((31, 33), (31, 33), 8, 8, True),  # 2-D, N = 1023: padded and masked keys
        ((32, 32), (32, 32), 8, 8, False),  # 2-D, N = 1024, plain non-local logits
        ((16, 16, 16), (16, 16, 16), 8, 8, True),  # 3-D, N = 4096
        ((31, 33), (16, 17), 8, 12, True),  # 2-D, sub-sampled keys (M = 272), Cv != C
        ((4, 8, 8), (4, 8, 8), 4, 4, False),  # 3-D, N = 256, shorter than one block
    ],
    ids=["2d-1023", "2d-1024-plain", "3d-4096", "2d-subsampled", "3d-256-plain"],
)
def test_pallas_kernels_equal_xla_in_float32(kernel, query_grid, key_grid, c, cv, whiten):
    args = _spatial_inputs(1, query_grid, key_grid, c, cv)
    results = _output_and_grads(kernel, args, whiten)
    assert results[0].shape == (1, int(np.prod(query_grid)), cv)
    _assert_relative_close(results, _output_and_grads("xla", args, whiten), 1e-5)


def test_traced_scale_is_folded_into_the_queries():
    # A learnt scale is a traced value: the kernels cannot take it as a static sm_scale.
    q, k, v, _ = _spatial_inputs(1, (10, 13), (10, 13), 8, 8)

    def total(scale, implementation):
        return jnp.sum(attention.dnl_attention(q, k, v, scale=scale, implementation=implementation))

    grads = [
        jax.jit(jax.grad(total), static_argnums=1)(0.5, kernel)
        for kernel in ("xla", "chunked", *PALLAS)
    ]
    np.testing.assert_allclose(grads[1:], [grads[0]] * 3, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# bfloat16: every kernel within twice the floor (the exact computation on bf16-rounded inputs).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "temperature, kernels",
    [(0.05, ("xla", "chunked", *PALLAS)), (1.0, PALLAS)],
    ids=["T0.05", "T1"],
)
def test_bfloat16_within_twice_the_floor(temperature, kernels):
    rows = bf16_accuracy.measure(kernels, 1023, temperature, batch=1, channels=64)
    for row in rows:
        assert row["within_bound"], (row["kernel"], row["ratios"])
        assert all(f > 0 for f in row["floor"])  # the floor is a real error, not zero


# ----------------------------------------------------------------------------------------------
# Automatic choice by platform (monkeypatched backend).
# ----------------------------------------------------------------------------------------------


def _pretend(monkeypatch, platform, capability=None):
    monkeypatch.setattr(attention, "platform", lambda *arrays: platform)
    monkeypatch.setattr(attention, "_nvidia_compute_capability", lambda *arrays: capability)


def _spec(n, c, dtype, cv=None):
    return (
        jax.ShapeDtypeStruct((2, n, c), dtype),
        jax.ShapeDtypeStruct((2, n, c), dtype),
        jax.ShapeDtypeStruct((2, n, cv or c), dtype),
    )


@pytest.mark.parametrize(
    "platform, capability, n, c, dtype, expected",
    [
        ("tpu", None, 4096, 64, jnp.bfloat16, "pallas_tpu"),
        ("tpu", None, 4096, 64, jnp.float32, "pallas_tpu"),
        ("tpu", None, 1023, 64, jnp.bfloat16, "xla"),  # small logits: materialise
        ("tpu", None, 4096, 2048, jnp.float32, "pallas_tpu"),  # the widest compiled rows
        ("tpu", None, 4096, 4096, jnp.bfloat16, "pallas_tpu"),
        ("tpu", None, 4096, 4096, jnp.float32, "chunked"),  # Mosaic ran out of VMEM
        ("gpu", (9, 0), 1023, 64, jnp.bfloat16, "cudnn"),  # odd N: cuDNN through padding
        ("gpu", (9, 0), 4096, 64, jnp.bfloat16, "cudnn"),
        ("gpu", (9, 0), 4096, 64, jnp.float32, "pallas_gpu"),  # cuDNN needs bf16/f16
        ("gpu", (9, 0), 4096, 12, jnp.bfloat16, "pallas_gpu"),  # C not a multiple of 8
        ("gpu", (8, 0), 4096, 256, jnp.bfloat16, "pallas_gpu"),  # C > 128 before Hopper
        ("gpu", (9, 0), 1000, 12, jnp.float32, "xla"),
        ("gpu", None, 4096, 64, jnp.bfloat16, "chunked"),  # not NVIDIA (ROCm): no Triton here
        ("cpu", None, 4096, 64, jnp.bfloat16, "chunked"),
        ("cpu", None, 1023, 64, jnp.float32, "xla"),
    ],
)
def test_selection_by_platform(monkeypatch, platform, capability, n, c, dtype, expected):
    _pretend(monkeypatch, platform, capability)
    assert attention.select_implementation(*_spec(n, c, dtype)) == expected


@pytest.mark.parametrize(
    "length, width, block",
    [(7168, 256, 512), (7168, 512, 512), (7168, 1024, 256), (7168, 2048, 128), (384, 256, 384)],
)
def test_tpu_blocks_shorten_for_wide_inputs(length, width, block):
    """512 positions per block up to 512 columns; wider rows get shorter blocks (Mosaic ran out
    of VMEM at 512 × 1024 float32 with padded keys), never under the 128 lanes; a block divides
    the padded length."""
    assert pallas_attention._tpu_block(length, width) == block
    with pallas_attention.block_size_override(128):
        assert pallas_attention._tpu_block(length, 256) == 128


def _cudnn_as_xla(monkeypatch, calls):
    """Swaps cuDNN for jax's XLA attention with the same contract (seq lengths included), so the
    padding and masking around it run on CPU; records each call's shapes and lengths."""
    xla_attention = jax.nn.dot_product_attention

    def kernel(q, k, v, *, scale, implementation, **seq_lengths):
        assert implementation == "cudnn"
        calls.append((q.shape, k.shape, seq_lengths))
        return xla_attention(q, k, v, scale=scale, implementation="xla", **seq_lengths)

    monkeypatch.setattr(jax.nn, "dot_product_attention", kernel)


@pytest.mark.parametrize("query_grid, key_grid", [((31, 33), (31, 33)), ((15, 17), (10, 13))])
def test_cudnn_padding_masks_odd_lengths_exactly(monkeypatch, query_grid, key_grid):
    """N = 1023 (and N = 255 with sub-sampled M = 130): padded to multiples of 128, the padding
    masked by the true lengths. Checked in float32 (allowed here only) against 'xla' within 1e-5.
    """
    _pretend(monkeypatch, "gpu", (9, 0))
    monkeypatch.setattr(attention, "_CUDNN_DTYPES", (jnp.bfloat16, jnp.float16, jnp.float32))
    calls = []
    _cudnn_as_xla(monkeypatch, calls)
    args = _spatial_inputs(2, query_grid, key_grid, 8, 8)
    assert attention.select_implementation(*args[:3]) == "cudnn"
    with jax.disable_jit():  # the recorded lengths are then concrete
        attention.pairwise_attention(*args[:3], scale=0.5, whiten=True, implementation="cudnn")
    n, m = int(np.prod(query_grid)), int(np.prod(key_grid))
    q_shape, k_shape, lengths = calls[0]
    assert q_shape[1] % 128 == 0 and k_shape[1] % 128 == 0 and q_shape[1] >= n
    np.testing.assert_array_equal(lengths["query_seq_lengths"], [n, n])
    np.testing.assert_array_equal(lengths["key_value_seq_lengths"], [m, m])
    results = _output_and_grads(None, args, whiten=True)
    _assert_relative_close(results, _output_and_grads("xla", args, whiten=True), 1e-5)


def test_low_temperature_bfloat16_auto_choice_on_gpu_meets_the_bound(monkeypatch):
    """bf16, T = 0.05, N = 1023 on an NVIDIA GPU: auto picks 'cudnn' (its wrapper run here with
    XLA's attention in its place, P rounded to bf16 as cuDNN does), within twice the floor."""
    _pretend(monkeypatch, "gpu", (9, 0))
    _cudnn_as_xla(monkeypatch, calls := [])
    (row,) = bf16_accuracy.measure([None], 1023, 0.05, batch=1, channels=64)
    assert calls and row["within_bound"], row["ratios"]


def test_low_temperature_bfloat16_auto_choice_on_tpu_meets_the_bound(monkeypatch):
    _pretend(monkeypatch, "tpu")
    n = 1100  # N · N above the materialise threshold, and not a multiple of 128
    assert attention.select_implementation(*_spec(n, 64, jnp.bfloat16)) == "pallas_tpu"
    (row,) = bf16_accuracy.measure([None], n, 0.05, batch=1, channels=64)
    assert row["within_bound"], row["ratios"]


def test_bad_block_size_raises():
    with pytest.raises(ValueError, match="integer >= 16"), pallas_attention.block_size_override(8):
        pass
