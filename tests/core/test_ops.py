"""The decomposition identity and the attention ops, checked against independent NumPy formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax.core import attention, ops


def np_softmax(logits, axis=-1):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def np_dnl_attention(q, k, v, unary, temperature, scale, whiten):
    """The DNL formula written directly in float64 NumPy, one sample at a time."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    if whiten:
        q = q - q.mean(axis=-2, keepdims=True)
        k = k - k.mean(axis=-2, keepdims=True)
    logits = np.matmul(q, np.swapaxes(k, -1, -2)) * scale / temperature
    out = np.matmul(np_softmax(logits), v)
    if unary is not None:
        weights = np_softmax(np.asarray(unary, np.float64))
        out = out + np.einsum("...m,...mc->...c", weights, v)[..., None, :]
    return out


def adversarial_cases(rng):
    """(name, q, k) pairs that stress the identity: big offsets, big scales, odd shapes."""
    c = 8
    normal = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    offset = 1e4 * normal(1, c)
    return [
        ("plain", normal(2, 16, c), normal(2, 16, c)),
        ("keys_fewer_than_queries", normal(2, 16, c), normal(2, 5, c)),
        ("single_query", normal(3, 1, c), normal(3, 7, c)),
        ("single_key", normal(3, 6, c), normal(3, 1, c)),
        ("shared_offset", normal(2, 12, c) + offset, normal(2, 9, c) + offset),
        ("large_key_offset", normal(2, 12, c), normal(2, 9, c) + offset),
        ("large_query_offset", normal(2, 12, c) + offset, normal(2, 9, c)),
        ("large_magnitude", 30 * normal(2, 12, c), 30 * normal(2, 9, c)),
        ("constant_queries", np.repeat(normal(2, 1, c), 10, axis=1), normal(2, 9, c)),
        ("heads", normal(2, 3, 10, c), normal(2, 3, 11, c)),
    ]


CASES = [case[0] for case in adversarial_cases(np.random.default_rng(0))]


@pytest.mark.parametrize("case", CASES)
def test_decomposition_identity_float64(case):
    _, q, k = next(c for c in adversarial_cases(np.random.default_rng(0)) if c[0] == case)
    with jax.enable_x64(True):
        q, k = jnp.asarray(q, jnp.float64), jnp.asarray(k, jnp.float64)
        pairwise, unary = ops.decompose_nonlocal_logits(q, k, scale=0.5)
        assert pairwise.dtype == jnp.float64
        assert pairwise.shape == q.shape[:-1] + k.shape[-2:-1]
        assert unary.shape == q.shape[:-2] + (1,) + k.shape[-2:-1]
        decomposed = jax.nn.softmax(pairwise + unary, axis=-1)
        direct = jax.nn.softmax(ops.nonlocal_logits(q, k, scale=0.5), axis=-1)
        error = float(jnp.max(jnp.abs(decomposed - direct)))
    assert error <= 1e-10, f"{case}: identity error {error:.3e}"


@pytest.mark.parametrize("case", ["plain", "keys_fewer_than_queries", "single_query", "heads"])
def test_decomposition_identity_float32(case):
    _, q, k = next(c for c in adversarial_cases(np.random.default_rng(1)) if c[0] == case)
    q, k = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
    pairwise, unary = ops.decompose_nonlocal_logits(q, k)
    decomposed = jax.nn.softmax(pairwise + unary, axis=-1)
    direct = jax.nn.softmax(ops.nonlocal_logits(q, k), axis=-1)
    chex.assert_trees_all_close(decomposed, direct, atol=2e-6)


def test_logits_against_numpy():
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 5, 4))
    with jax.enable_x64(True):
        nonlocal_ = ops.nonlocal_logits(jnp.asarray(q), jnp.asarray(k), scale=0.3)
        pairwise = ops.whitened_pairwise_logits(jnp.asarray(q), jnp.asarray(k), scale=0.3)
        unary = ops.unary_logits(jnp.asarray(q), jnp.asarray(k), scale=0.3)
    qw, kw = q - q.mean(1, keepdims=True), k - k.mean(1, keepdims=True)
    np.testing.assert_allclose(nonlocal_, 0.3 * q @ k.transpose(0, 2, 1), rtol=1e-12)
    np.testing.assert_allclose(pairwise, 0.3 * qw @ kw.transpose(0, 2, 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        unary, 0.3 * q.mean(1, keepdims=True) @ k.transpose(0, 2, 1), rtol=1e-12
    )
    # The two terms differ from the plain logits by a row constant, and only by that.
    difference = np.asarray(nonlocal_) - np.asarray(pairwise) - np.asarray(unary)
    np.testing.assert_allclose(
        difference, np.broadcast_to(difference[..., :1], difference.shape), atol=1e-12
    )
    assert np.ptp(difference[..., 0]) > 1e-3  # The constant is per query: not trivially zero.


def test_softmax_invariant_to_key_mean():
    rng = np.random.default_rng(3)
    q, k = jnp.asarray(rng.standard_normal((2, 7, 5))), jnp.asarray(rng.standard_normal((2, 9, 5)))
    shift = jnp.asarray(rng.standard_normal((2, 1, 5)) * 3)
    with jax.enable_x64(True):
        q, k, shift = (a.astype(jnp.float64) for a in (q, k, shift))
        before = jax.nn.softmax(ops.nonlocal_logits(q, k), axis=-1)
        after = jax.nn.softmax(ops.nonlocal_logits(q, k + shift), axis=-1)
        chex.assert_trees_all_close(before, after, atol=1e-12)
        # The whitened term is invariant to shifting queries or keys, before any softmax.
        base = ops.whitened_pairwise_logits(q, k)
        chex.assert_trees_all_close(
            ops.whitened_pairwise_logits(q + shift, k - shift), base, atol=1e-12
        )
        # ... while the unary term carries the query mean: it does change with a query shift.
        assert not np.allclose(ops.unary_logits(q + shift, k), ops.unary_logits(q, k))


def test_constant_queries_have_no_pairwise_term():
    rng = np.random.default_rng(4)
    q = jnp.asarray(np.repeat(rng.standard_normal((2, 1, 6)), 8, axis=1), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 5, 6)), jnp.float32)
    # Equal rows leave only the rounding of their mean: the term vanishes to float32 precision.
    np.testing.assert_allclose(ops.whitened_pairwise_logits(q, k), 0.0, atol=1e-5)
    assert float(jnp.max(jnp.abs(ops.nonlocal_logits(q, k)))) > 0.1


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("with_unary", [True, False])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_dnl_attention_against_numpy(whiten, with_unary, scale):
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((2, 3, 10, 4)), rng.standard_normal((2, 3, 6, 4))
    v = rng.standard_normal((2, 3, 6, 5))
    unary = rng.standard_normal((2, 3, 6)) if with_unary else None
    with jax.enable_x64(True):
        out = attention.dnl_attention(
            jnp.asarray(q),
            jnp.asarray(k),
            jnp.asarray(v),
            None if unary is None else jnp.asarray(unary),
            temperature=0.3,
            scale=scale,
            whiten=whiten,
            implementation="xla",
        )
    expected = np_dnl_attention(q, k, v, unary, 0.3, 4**-0.5 if scale is None else scale, whiten)
    assert out.shape == (2, 3, 10, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_unary_attention_and_dot_product_against_numpy():
    rng = np.random.default_rng(6)
    q, k, v = (
        rng.standard_normal((2, 7, 3)),
        rng.standard_normal((2, 4, 3)),
        rng.standard_normal((2, 4, 5)),
    )
    unary = rng.standard_normal((2, 4))
    with jax.enable_x64(True):
        unary_out = ops.unary_attention(jnp.asarray(unary), jnp.asarray(v))
        dot = ops.dot_product_aggregate(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    np.testing.assert_allclose(
        unary_out[:, 0], np.einsum("bm,bmc->bc", np_softmax(unary), v), rtol=1e-12
    )
    np.testing.assert_allclose(dot, (q @ k.transpose(0, 2, 1) / 4) @ v, rtol=1e-12)


def _exp_input_dtypes(jaxpr):
    """The dtype of every `exp` operand in a jaxpr and its sub-jaxprs (jit, scan, custom_vjp)."""
    dtypes = []
    for equation in jaxpr.eqns:
        if equation.primitive.name == "exp":
            dtypes.append(equation.invars[0].aval.dtype)
        for value in equation.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    dtypes += _exp_input_dtypes(inner)
    return dtypes


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_bfloat16_inputs_use_float32_softmax(implementation):
    """Every exponential of the softmaxes (pairwise and unary) runs in float32 on bfloat16
    inputs, and the result is the float32 computation on the same (bfloat16-rounded) values, to
    bfloat16's resolution of the output."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((2, 32, 8)).astype(np.float32) for _ in range(3))
    unary = 3 * rng.standard_normal((2, 32)).astype(np.float32)
    low = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v, unary)]

    def run(*arrays):
        return attention.dnl_attention(*arrays, implementation=implementation)

    jaxpr = jax.make_jaxpr(run)(*low).jaxpr
    dtypes = _exp_input_dtypes(jaxpr)
    assert len(dtypes) >= 2, "expected the pairwise and the unary softmax"
    assert set(dtypes) == {jnp.dtype(jnp.float32)}, dtypes
    out = run(*low)
    assert out.dtype == jnp.bfloat16
    reference = run(*(a.astype(jnp.float32) for a in low))
    # The output is rounded to bfloat16 (relative 2^-8) after a bfloat16 matmul of the float32
    # probabilities with v: a few roundoffs of |out|.
    chex.assert_trees_all_close(out.astype(jnp.float32), reference, atol=4 * 2.0**-8, rtol=2**-6)


def test_large_logits_do_not_overflow():
    q = jnp.full((1, 4, 2), 300.0, jnp.float32)
    k = jnp.asarray([[[300.0, 300.0], [-300.0, -300.0], [299.0, 300.0]]], jnp.float32)
    v = jnp.eye(3, dtype=jnp.float32)[None]
    out = attention.dnl_attention(q, k, v, jnp.asarray([[1e4, 0.0, -1e4]]), whiten=False, scale=1.0)
    assert bool(jnp.all(jnp.isfinite(out)))
    # Pairwise: all weight on key 0 (largest logit); unary: all weight on key 0 too.
    np.testing.assert_allclose(out[0, :, 0], 2.0, atol=1e-6)


def test_dnl_attention_is_differentiable_and_jittable():
    rng = np.random.default_rng(8)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 6, 3)), jnp.float32) for _ in range(3))
    unary = jnp.asarray(rng.standard_normal((2, 6)), jnp.float32)
    loss = lambda *a: jnp.sum(attention.dnl_attention(*a, temperature=0.5) ** 2)  # noqa: E731
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, unary)
    jit_grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, unary)
    chex.assert_trees_all_close(grads, jit_grads, atol=1e-5)
    chex.assert_tree_all_finite(grads)
    # Whitening makes the output independent of the key mean: its gradient sums to zero.
    np.testing.assert_allclose(jnp.sum(grads[1], axis=1), 0.0, atol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.nonlocal_logits(jnp.ones(4), jnp.ones((3, 4))), "rank >= 2"),
        (
            lambda: ops.whitened_pairwise_logits(jnp.ones((3, 4)), jnp.ones((3, 5))),
            "same number of channels",
        ),
        (
            lambda: attention.dnl_attention(jnp.ones((3, 4)), jnp.ones((5, 4)), jnp.ones((6, 2))),
            "same number of positions",
        ),
        (
            lambda: attention.dnl_attention(
                jnp.ones((3, 4)), jnp.ones((5, 4)), jnp.ones((5, 2)), temperature=0.0
            ),
            "temperature must be > 0",
        ),
        (
            lambda: attention.dnl_attention(
                jnp.ones((3, 4)), jnp.ones((5, 4)), jnp.ones((5, 2)), temperature=-1.0
            ),
            "temperature must be > 0",
        ),
        (
            lambda: attention.dnl_attention(
                jnp.ones((3, 4)), jnp.ones((5, 4)), jnp.ones((5, 2)), jnp.ones(4)
            ),
            "unary logits",
        ),
        (
            lambda: attention.dnl_attention(
                jnp.ones((3, 4)), jnp.ones((5, 4)), jnp.ones((5, 2)), implementation="fast"
            ),
            "unknown attention implementation",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
