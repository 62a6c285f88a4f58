"""Memory-efficient attention kernels (dnl_jax.core.attention) against the materialised 'xla'
path."""

import logging
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax.core import attention, blocks
from dnl_jax.core.attention import chunked

# Small blocks so that tiny inputs still span several query and key blocks, with remainders.
SMALL_BLOCKS = (16, 8)


def _inputs(lead, n, m, c, cv, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(keys[0], (*lead, n, c), dtype)
    k = jax.random.normal(keys[1], (*lead, m, c), dtype)
    v = jax.random.normal(keys[2], (*lead, m, cv), dtype)
    unary = jax.random.normal(keys[3], (*lead, m), dtype)
    return q, k, v, unary


def _attention_fn(implementation, whiten=True, temperature=0.3, blocks_qk=SMALL_BLOCKS):
    def fn(q, k, v, unary):
        with chunked.block_sizes_override(*blocks_qk):
            return attention.dnl_attention(
                q,
                k,
                v,
                unary,
                temperature=temperature,
                whiten=whiten,
                implementation=implementation,
            )

    return fn


def _value_and_grads(fn, *args):
    """Output and d(Σ sin(out))/d(q, k, v, unary): a non-trivial cotangent for every entry."""

    def loss(*a):
        return jnp.sum(jnp.sin(fn(*a).astype(jnp.float32)))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
    return jax.jit(fn)(*args), grads


@pytest.mark.parametrize("implementation", ["chunked", None])
@pytest.mark.parametrize(
    "lead, n, m, c, cv, whiten",
    [
        ((2,), 37, 37, 8, 8, True),  # odd N, not a multiple of either block size
        ((2, 3), 37, 29, 8, 5, True),  # head axis, M != N, Cv != C
        ((1,), 20, 45, 4, 6, False),  # more keys than queries, plain (unwhitened) logits
        ((), 9, 3, 4, 4, True),  # no leading axes, sequences shorter than one block
    ],
)
def test_matches_xla_values_and_gradients(implementation, lead, n, m, c, cv, whiten):
    args = _inputs(lead, n, m, c, cv)
    out, grads = _value_and_grads(_attention_fn(implementation, whiten), *args)
    ref_out, ref_grads = _value_and_grads(_attention_fn("xla", whiten), *args)
    assert out.shape == (*lead, n, cv)
    chex.assert_trees_all_close(out, ref_out, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("blocks_qk", [(1, 1), (5, 3), (64, 64), (37, 29)])
def test_chunked_any_block_size(blocks_qk):
    args = _inputs((2,), 37, 29, 8, 8, seed=1)
    out, grads = _value_and_grads(_attention_fn("chunked", blocks_qk=blocks_qk), *args)
    ref_out, ref_grads = _value_and_grads(_attention_fn("xla"), *args)
    chex.assert_trees_all_close(out, ref_out, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-5)


def test_chunked_sharp_softmax_is_stable():
    # temperature 0.01 → logits in the hundreds: the online max must keep exp() finite.
    args = _inputs((2,), 33, 33, 16, 8, seed=2)
    out, grads = _value_and_grads(_attention_fn("chunked", temperature=0.01), *args)
    ref_out, ref_grads = _value_and_grads(_attention_fn("xla", temperature=0.01), *args)
    assert np.isfinite(np.asarray(out)).all()
    chex.assert_trees_all_close(out, ref_out, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-3, atol=1e-3)


def test_chunked_under_batch_sharded_jit():
    # The global-view training step shards the batch over devices (4 fake CPU devices here).
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    args = _inputs((2 * jax.device_count(),), 21, 13, 8, 8, seed=5)
    sharded = tuple(jax.device_put(a, sharding) for a in args)
    out, grads = _value_and_grads(_attention_fn("chunked"), *sharded)
    ref_out, ref_grads = _value_and_grads(_attention_fn("xla"), *args)
    chex.assert_trees_all_close(out, ref_out, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-5)


def test_chunked_bfloat16_close_to_float32():
    args32 = _inputs((2,), 40, 40, 16, 16, seed=3)
    args16 = tuple(a.astype(jnp.bfloat16) for a in args32)
    # Reference on the same (bf16-rounded) numbers, in float32 throughout.
    rounded = tuple(a.astype(jnp.float32) for a in args16)
    out, grads = _value_and_grads(_attention_fn("chunked"), *args16)
    ref_out, ref_grads = _value_and_grads(_attention_fn("xla"), *rounded)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    chex.assert_trees_all_close(out.astype(jnp.float32), ref_out, rtol=3e-2, atol=3e-2)
    for grad, ref in zip(grads, ref_grads, strict=False):
        scale = float(jnp.max(jnp.abs(ref)))
        np.testing.assert_allclose(grad.astype(jnp.float32), ref, atol=5e-2 * scale)


# ----------------------------------------------------------------------------------------------
# Structure: the chunked kernel never forms an N × M array, forward or backward.
# ----------------------------------------------------------------------------------------------


def _largest_intermediate(jaxpr) -> int:
    """Largest array size among all equations' outputs, recursing into scans, maps, vjps."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    largest = max(largest, _largest_intermediate(sub.jaxpr))
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    largest = max(largest, _largest_intermediate(sub))
    return largest


@pytest.mark.parametrize("implementation, forms_nm", [("chunked", False), ("xla", True)])
def test_backward_jaxpr_has_no_n_by_m_array(implementation, forms_nm):
    n, m = 96, 80  # N · M = 7680, far above any O(N) array here (at most 96 · 16 with C = 4)
    args = _inputs((1,), n, m, 4, 4)
    fn = _attention_fn(implementation, blocks_qk=(32, 16))

    def loss(*a):
        return jnp.sum(fn(*a) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args).jaxpr
    assert (_largest_intermediate(jaxpr) >= n * m) == forms_nm


def _compiled_temp_bytes(implementation, n):
    fn = _attention_fn(implementation, blocks_qk=(64, 64))

    def loss(*a):
        return jnp.sum(fn(*a) ** 2)

    spec = jax.ShapeDtypeStruct((2, n, 8), jnp.float32)
    unary = jax.ShapeDtypeStruct((2, n), jnp.float32)
    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    compiled = grad_fn.lower(spec, spec, spec, unary).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_backward_temp_memory_grows_linearly():
    # 4× the positions: linear memory grows ~4×, a materialised N × N matrix ~16×.
    chunked = _compiled_temp_bytes("chunked", 1024) / _compiled_temp_bytes("chunked", 256)
    materialised = _compiled_temp_bytes("xla", 1024) / _compiled_temp_bytes("xla", 256)
    assert chunked < 6, f"chunked temp memory grew {chunked:.1f}× for 4× positions"
    assert materialised > 10, f"control: 'xla' grew only {materialised:.1f}×"


# ----------------------------------------------------------------------------------------------
# Automatic choice, cuDNN availability and its fallback (no GPU here: CPU paths only).
# ----------------------------------------------------------------------------------------------


def test_select_implementation_on_cpu_and_logged_once_at_debug(monkeypatch, caplog):
    monkeypatch.setattr(attention, "_logged_choices", set())  # as in a fresh process
    small = jax.ShapeDtypeStruct((2, 256, 16), jnp.float32)
    large = jax.ShapeDtypeStruct((2, 4096, 16), jnp.float32)
    with caplog.at_level(logging.DEBUG, logger="dnl_jax.core.attention"):
        assert attention.select_implementation(small, small, small) == "xla"
        assert attention.select_implementation(large, large, large) == "chunked"
        assert attention.select_implementation(large, large, large) == "chunked"
    choices = [r for r in caplog.records if "implementation=None chose" in r.getMessage()]
    assert [r.getMessage().split("chose ")[1][:9] for r in choices] == ["'xla' for", "'chunked'"]
    # DEBUG, so progress output (absl/logging at INFO) stays free of kernel choices.
    assert {r.levelno for r in choices} == {logging.DEBUG}


def test_import_ops_loads_no_layer_above_it():
    code = (
        "import sys, dnl_jax.core.ops; "
        "print(sorted(m for m in sys.modules if m.startswith('dnl_jax')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # dnl_jax._compat: the table of the old module paths (no layer); dnl_jax.core: a docstring.
    loaded = ["dnl_jax", "dnl_jax._compat", "dnl_jax.core", "dnl_jax.core.ops"]
    assert out.stdout.strip() == str(loaded)


def test_cudnn_on_cpu_raises_a_clear_error():
    q, k, v, unary = _inputs((2,), 16, 16, 8, 8, dtype=jnp.bfloat16)
    assert "NVIDIA GPU" in attention.cudnn_unsupported_reason(q, k, v)
    with pytest.raises(ValueError, match="implementation='cudnn' is unavailable.*'chunked'"):
        attention.dnl_attention(q, k, v, unary, implementation="cudnn")


def _pretend_nvidia_gpu(monkeypatch, capability=(9, 0)):
    monkeypatch.setattr(attention, "_nvidia_compute_capability", lambda *arrays: capability)


@pytest.mark.parametrize(
    "dtype, c, cv, capability, reason",
    [
        (jnp.float32, 16, 16, (9, 0), "bfloat16 or float16"),
        (jnp.bfloat16, 12, 12, (9, 0), "multiple of 8"),
        (jnp.bfloat16, 256, 256, (8, 0), "<= 128"),
        (jnp.bfloat16, 16, 8, (9, 0), "must equal"),
        (jnp.bfloat16, 256, 256, (9, 0), None),
    ],
)
def test_cudnn_constraints(monkeypatch, dtype, c, cv, capability, reason):
    _pretend_nvidia_gpu(monkeypatch, capability)
    q = k = jax.ShapeDtypeStruct((2, 8, c), dtype)
    v = jax.ShapeDtypeStruct((2, 8, cv), dtype)
    found = attention.cudnn_unsupported_reason(q, k, v)
    assert (found is None) if reason is None else (reason in found)
    assert attention.select_implementation(q, k, v) == ("cudnn" if reason is None else "xla")


def test_cudnn_wrapper_layout_whitening_and_scale(monkeypatch):
    """Everything around the cuDNN kernel (layout, whitening, scale folding), run on CPU by
    swapping the kernel for jax's own XLA attention with the same contract."""
    _pretend_nvidia_gpu(monkeypatch)
    xla_dot_product_attention = jax.nn.dot_product_attention

    def kernel(q, k, v, *, scale, implementation, **seq_lengths):
        assert implementation == "cudnn" and q.ndim == 4 and q.shape[2] == 1
        return xla_dot_product_attention(q, k, v, scale=scale, implementation="xla", **seq_lengths)

    monkeypatch.setattr(jax.nn, "dot_product_attention", kernel)
    args = _inputs((2, 3), 24, 16, 8, 8, dtype=jnp.bfloat16)
    rounded = tuple(a.astype(jnp.float32) for a in args)
    out = _attention_fn("cudnn")(*args)
    ref = _attention_fn("xla")(*rounded)
    assert out.shape == ref.shape and out.dtype == jnp.bfloat16
    chex.assert_trees_all_close(out.astype(jnp.float32), ref, rtol=3e-2, atol=3e-2)


def test_automatic_choice_falls_back_when_cudnn_rejects(monkeypatch, caplog):
    _pretend_nvidia_gpu(monkeypatch)

    def rejecting_kernel(*args, **kwargs):
        raise NotImplementedError("unsupported sequence length")

    cudnn = attention.KERNELS["cudnn"]
    monkeypatch.setitem(attention.KERNELS, "cudnn", cudnn._replace(function=rejecting_kernel))
    args = _inputs((2,), 24, 16, 8, 8, dtype=jnp.bfloat16)
    with caplog.at_level(logging.WARNING, logger="dnl_jax.core.attention"):
        out = _attention_fn(None)(*args)
    assert any("using 'pallas_gpu'" in r.getMessage() for r in caplog.records)
    chex.assert_trees_all_close(out, _attention_fn("pallas_gpu")(*args))
    with pytest.raises(NotImplementedError):  # a named kernel is never swapped silently
        _attention_fn("cudnn")(*args)


def test_bad_block_sizes_raise():
    with pytest.raises(ValueError, match="positive integers"), chunked.block_sizes_override(0, 8):
        pass


# ----------------------------------------------------------------------------------------------
# Blocks pass `implementation` through: 'chunked' blocks equal 'xla' blocks.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        lambda impl: blocks.DisentangledNonLocal(implementation=impl),
        lambda impl: blocks.DisentangledNonLocal(implementation=impl, sub_sample=True),
        lambda impl: blocks.NonLocal(implementation=impl),
    ],
    ids=["dnl", "dnl-subsampled", "nonlocal"],
)
def test_blocks_chunked_match_xla(module):
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 7, 16))  # N = 35
    variables = module("xla").init(jax.random.PRNGKey(5), x)
    # The output norm starts at zero (block = identity): make it non-zero so that the attention
    # output reaches the block output and its gradients.
    variables = jax.tree_util.tree_map(lambda a: jnp.where(a == 0, 0.5, a), variables)

    def run(impl):
        def loss(params, x):
            out = module(impl).apply({**variables, "params": params}, x)
            return jnp.sum(jnp.sin(out)), out

        with chunked.block_sizes_override(*SMALL_BLOCKS):
            return jax.grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)

    (grads, out) = run("chunked")
    (ref_grads, ref_out) = run("xla")
    chex.assert_trees_all_close(out, ref_out, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-5)
