"""The Flax blocks: shapes, identity at init, the reference formulas in NumPy, ablations, errors."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax.core import blocks

EPS = 1e-5  # PyTorch's batch-norm epsilon, used by the blocks.


def randomize(variables, seed=0):
    """Random params and batch statistics, so that no block is the identity."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    rng = np.random.default_rng(seed)
    out = {}
    for path, value in flat.items():
        if path[-1] == "var":
            out[path] = jnp.asarray(rng.uniform(0.5, 1.5, value.shape), value.dtype)
        else:
            out[path] = jnp.asarray(0.3 * rng.standard_normal(value.shape), value.dtype)
    return flax.traverse_util.unflatten_dict(out)


def np_softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_conv1x1(x, conv):
    """x [B, N, Cin] times a 1×1 kernel [1, ..., Cin, Cout] (+ bias)."""
    kernel = np.asarray(conv["kernel"], np.float64)
    y = x @ kernel.reshape(-1, kernel.shape[-1])
    return y + np.asarray(conv["bias"]) if "bias" in conv else y


def np_conv_out(y, variables):
    """conv_out: 1×1 conv then batch norm in eval mode."""
    params, stats = variables["params"]["conv_out"], variables["batch_stats"]["conv_out"]["bn"]
    y = np_conv1x1(y, params["conv"])
    y = (y - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + EPS)
    return y * np.asarray(params["bn"]["scale"]) + np.asarray(params["bn"]["bias"])


def np_dnl_block(x, variables, *, temperature, pairwise=True, unary=True, whiten=True):
    """mmseg's DisentangledNonLocal2d forward written directly in float64 NumPy."""
    p = variables["params"]
    shape = x.shape
    x = np.asarray(x, np.float64).reshape(shape[0], -1, shape[-1])
    g = np_conv1x1(x, p["g"]["conv"])
    y = np.zeros_like(g)
    if pairwise:
        theta, phi = np_conv1x1(x, p["theta"]["conv"]), np_conv1x1(x, p["phi"]["conv"])
        if whiten:
            theta = theta - theta.mean(1, keepdims=True)
            phi = phi - phi.mean(1, keepdims=True)
        logits = theta @ phi.transpose(0, 2, 1) / np.sqrt(theta.shape[-1]) / temperature
        y = y + np_softmax(logits) @ g
    if unary:
        mask = np_conv1x1(x, p["conv_mask"])[..., 0]
        y = y + (np_softmax(mask)[:, None, :] @ g)
    return (x + np_conv_out(y, variables)).reshape(shape)


def init(module, x, seed=0):
    return module.init(jax.random.key(seed), x)


def random_input(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


ALL_BLOCKS = {
    "dnl": blocks.DisentangledNonLocal,
    "nl": blocks.NonLocal,
    "nl_dot": lambda **kw: blocks.NonLocal(mode="dot_product", **kw),
    "context": blocks.ContextBlock,
}


@pytest.mark.parametrize("name", ALL_BLOCKS)
@pytest.mark.parametrize("spatial", [(9,), (5, 7), (3, 4, 5)])
def test_shapes_and_identity_at_init(name, spatial):
    x = random_input((2, *spatial, 8))
    module = ALL_BLOCKS[name]()
    variables = init(module, x)
    out = module.apply(variables, x)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)
    if "batch_stats" in variables:
        out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("norm", [None, "batch", "group", "layer"])
def test_every_norm_starts_as_identity(norm):
    x = random_input((2, 4, 4, 8))
    module = blocks.DisentangledNonLocal(norm=norm, num_groups=4)
    variables = init(module, x)
    np.testing.assert_array_equal(module.apply(variables, x), x)
    conv_out = variables["params"]["conv_out"]
    # mmcv: with a norm the conv has no bias and the norm is zeroed; without, the conv is zeroed.
    assert ("bias" in conv_out["conv"]) == (norm is None)


def test_dnl_parameter_count_matches_mmseg():
    shapes = jax.eval_shape(
        lambda x: init(blocks.DisentangledNonLocal(), x), jnp.zeros((1, 4, 4, 512))
    )
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
    assert count == 526_593


def test_dnl_matches_reference_formula():
    x = random_input((2, 5, 6, 8))
    module = blocks.DisentangledNonLocal()
    variables = randomize(init(module, x))
    out = module.apply(variables, x)
    expected = np_dnl_block(np.asarray(x), variables, temperature=0.05)
    assert np.abs(expected - np.asarray(x)).max() > 0.1  # Not the identity any more.
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize(
    "switches",
    [
        dict(pairwise=False),
        dict(unary=False),
        dict(whiten=False),
        dict(whiten=False, unary=False),
    ],
)
def test_ablation_switches_match_reference_formula(switches):
    x = random_input((2, 4, 5, 8), seed=1)
    module = blocks.DisentangledNonLocal(temperature=0.5, **switches)
    variables = randomize(init(module, x), seed=1)
    expected = np_dnl_block(np.asarray(x), variables, temperature=0.5, **switches)
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=2e-4, atol=2e-4)


def test_switches_create_only_the_parameters_they_use():
    x = random_input((1, 4, 4, 8))
    unary_only = init(blocks.DisentangledNonLocal(pairwise=False), x)["params"]
    pairwise_only = init(blocks.DisentangledNonLocal(unary=False), x)["params"]
    assert set(unary_only) == {"g", "conv_mask", "conv_out"}
    assert set(pairwise_only) == {"g", "theta", "phi", "conv_out"}


def test_dnl_without_whitening_and_unary_is_the_nonlocal_block():
    x = random_input((2, 4, 6, 8), seed=2)
    variables = randomize(init(blocks.NonLocal(), x), seed=2)
    plain = blocks.DisentangledNonLocal(whiten=False, unary=False, temperature=1.0)
    np.testing.assert_allclose(
        plain.apply(variables, x), blocks.NonLocal().apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_whitening_ignores_a_shift_of_queries_and_keys():
    x = random_input((2, 4, 4, 8), seed=3)
    for whiten, invariant in [(True, True), (False, False)]:
        module = blocks.DisentangledNonLocal(whiten=whiten, unary=False, temperature=0.5)
        variables = randomize(init(module, x), seed=3)
        shifted = jax.tree_util.tree_map(lambda a: a, variables)
        shifted["params"]["theta"]["conv"]["bias"] = (
            variables["params"]["theta"]["conv"]["bias"] + 2.0
        )
        shifted["params"]["phi"]["conv"]["bias"] = variables["params"]["phi"]["conv"]["bias"] - 1.0
        same = np.allclose(module.apply(variables, x), module.apply(shifted, x), atol=1e-4)
        assert same == invariant, f"whiten={whiten}"


def test_nonlocal_modes_and_sub_sampling_match_reference():
    x = random_input((2, 2, 4, 6, 8), seed=4)  # Video-like [B, T, H, W, C].
    for mode in ["embedded_gaussian", "dot_product"]:
        module = blocks.NonLocal(mode=mode, sub_sample=True, pool_window=(1, 2, 2))
        variables = randomize(init(module, x), seed=4)
        p = variables["params"]
        xf = np.asarray(x, np.float64).reshape(2, -1, 8)

        def pooled(y):  # Max-pool (1, 2, 2) of a [B, T, H, W, C'] projection, flattened.
            y = y.reshape(2, 2, 2, 2, 3, 2, -1).max(axis=(3, 5))
            return y.reshape(2, -1, y.shape[-1])

        theta = np_conv1x1(xf, p["theta"]["conv"])
        phi = pooled(np_conv1x1(xf, p["phi"]["conv"]).reshape(2, 2, 4, 6, -1))
        g = pooled(np_conv1x1(xf, p["g"]["conv"]).reshape(2, 2, 4, 6, -1))
        logits = theta @ phi.transpose(0, 2, 1)
        if mode == "dot_product":
            weights = logits / phi.shape[1]
        else:
            weights = np_softmax(logits / np.sqrt(theta.shape[-1]))
        expected = xf + np_conv_out(weights @ g, variables)
        np.testing.assert_allclose(
            module.apply(variables, x), expected.reshape(x.shape), rtol=2e-4, atol=2e-4
        )


def test_context_block_matches_reference():
    x = random_input((2, 5, 5, 8), seed=5)
    module = blocks.ContextBlock(fusion_types=("channel_add", "channel_mul"))
    variables = randomize(init(module, x), seed=5)
    p = variables["params"]
    xf = np.asarray(x, np.float64).reshape(2, -1, 8)
    context = np_softmax(np_conv1x1(xf, p["conv_mask"])[..., 0])[:, None, :] @ xf  # [B, 1, C]

    def transform(name):
        h = np_conv1x1(context, p[f"{name}_0"])
        ln = p[f"{name}_1"]
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + EPS)
        h = np.maximum(h * np.asarray(ln["scale"]) + np.asarray(ln["bias"]), 0)
        return np_conv1x1(h, p[f"{name}_3"])

    expected = xf / (1 + np.exp(-transform("channel_mul_conv"))) + transform("channel_add_conv")
    np.testing.assert_allclose(
        module.apply(variables, x), expected.reshape(x.shape), rtol=2e-4, atol=2e-4
    )


class JitGradVmapTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_apply_and_grad_agree_across_transforms(self):
        x = random_input((2, 4, 4, 8), seed=6)
        module = blocks.DisentangledNonLocal(temperature=0.5)
        variables = randomize(init(module, x), seed=6)

        def loss(params, x):
            out = module.apply({**variables, "params": params}, x)
            return jnp.sum(out**2)

        value, grads = self.variant(jax.value_and_grad(loss))(variables["params"], x)
        ref_value, ref_grads = jax.value_and_grad(loss)(variables["params"], x)
        chex.assert_trees_all_close(value, ref_value, rtol=1e-5)
        chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-4)
        chex.assert_tree_all_finite(grads)

    def test_vmap_equals_per_sample_apply(self):
        x = random_input((3, 2, 4, 4, 8), seed=7)  # A stack of 3 batches of 2.
        module = blocks.DisentangledNonLocal()
        variables = randomize(init(module, x[0]), seed=7)
        stacked = jax.vmap(lambda xb: module.apply(variables, xb))(x)
        for i in range(3):
            chex.assert_trees_all_close(stacked[i], module.apply(variables, x[i]), atol=1e-5)
        # Eval mode: each sample is independent of the rest of its batch.
        chex.assert_trees_all_close(module.apply(variables, x[0, :1]), stacked[0, :1], atol=1e-5)


def test_bfloat16_close_to_float32():
    x = random_input((2, 6, 6, 16), seed=8)
    variables = randomize(init(blocks.DisentangledNonLocal(), x), seed=8)
    full = blocks.DisentangledNonLocal(temperature=0.5).apply(variables, x)
    half = blocks.DisentangledNonLocal(temperature=0.5, dtype=jnp.bfloat16).apply(variables, x)
    assert half.dtype == jnp.float32  # Residual in the input's dtype, branch computed in bf16.
    relative = float(jnp.linalg.norm(half - full) / jnp.linalg.norm(full - x))
    assert relative < 0.05, relative


def test_batch_norm_over_devices_equals_global_batch():
    x = random_input((8, 4, 4, 8), seed=9)
    module = blocks.DisentangledNonLocal(axis_name="batch")
    variables = randomize(init(blocks.DisentangledNonLocal(), x), seed=9)
    single = blocks.DisentangledNonLocal()
    expected, expected_state = single.apply(variables, x, train=True, mutable=["batch_stats"])

    def step(xs):
        return module.apply(variables, xs, train=True, mutable=["batch_stats"])

    out, state = jax.pmap(step, axis_name="batch")(x.reshape(4, 2, *x.shape[1:]))
    chex.assert_trees_all_close(out.reshape(x.shape), expected, atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], state), expected_state, atol=1e-5)


@pytest.mark.parametrize(
    "module, shape, message",
    [
        (blocks.DisentangledNonLocal(), (2, 8), "1 to 3 spatial dims"),
        (blocks.NonLocal(), (1, 2, 2, 2, 2, 8), "1 to 3 spatial dims"),
        (blocks.DisentangledNonLocal(reduction=4), (1, 4, 4, 3), "too few channels"),
        (blocks.DisentangledNonLocal(temperature=0.0), (1, 4, 4, 8), "temperature must be > 0"),
        (blocks.DisentangledNonLocal(pairwise=False, unary=False), (1, 4, 4, 8), "both off"),
        (blocks.DisentangledNonLocal(norm="instance"), (1, 4, 4, 8), "unknown norm"),
        (blocks.NonLocal(mode="gaussian_blur"), (1, 4, 4, 8), "unknown non-local mode"),
        (blocks.NonLocal(sub_sample=True, pool_window=(2, 2)), (1, 4, 4, 4, 8), "pool_window"),
        (blocks.ContextBlock(pooling="max"), (1, 4, 4, 8), "unknown pooling"),
        (blocks.ContextBlock(fusion_types=("channel_sub",)), (1, 4, 4, 8), "fusion_types"),
        (blocks.ContextBlock(ratio=0.01), (1, 4, 4, 8), "no bottleneck channels"),
    ],
)
def test_bad_inputs_raise_clear_errors(module, shape, message):
    with pytest.raises(ValueError, match=message):
        module.init(jax.random.key(0), jnp.ones(shape))


def test_integer_input_is_rejected():
    with pytest.raises(ValueError, match="floating-point"):
        blocks.DisentangledNonLocal().init(jax.random.key(0), jnp.ones((1, 4, 4, 8), jnp.int32))


def test_wrong_channel_count_at_apply_is_reported():
    variables = init(blocks.DisentangledNonLocal(), jnp.ones((1, 4, 4, 8)))
    # Flax's error names the first parameter that does not fit and both shapes: 6 input channels
    # (3 after the reduction) against the 8 (4) the variables were made for.
    expected = r'"kernel" in "/g/conv".*shape \(1, 1, 6, 3\).*shape \(1, 1, 8, 4\)'
    with pytest.raises(flax.errors.ScopeParamShapeError, match=expected):
        blocks.DisentangledNonLocal().apply(variables, jnp.ones((1, 4, 4, 6)))
