"""layers.conv_or_pointwise_matmul: 1×1 convolutions as matmuls (a CPU speed-up), same numbers."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from dnl_jax.core import layers


@pytest.mark.parametrize(
    "shape, kernel, padding, stride, pointwise",
    [
        ((2, 9, 7, 16), 1, 0, 1, True),
        ((2, 5, 16), 1, 0, 1, True),
        ((1, 3, 4, 5, 16), 1, 0, 1, True),
        ((2, 9, 7, 16), 3, 1, 1, False),  # a real window: the convolution itself
        ((2, 9, 7, 16), 1, 0, 2, False),  # strided 1×1: the convolution itself
    ],
)
def test_conv_module_matches_flax_conv(monkeypatch, shape, kernel, padding, stride, pointwise):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    module = layers.ConvModule(8, kernel_size=kernel, padding=padding, strides=stride)
    params = module.init(jax.random.PRNGKey(1), x)["params"]
    nd = x.ndim - 2
    reference = nn.Conv(8, (kernel,) * nd, strides=stride, padding=[(padding, padding)] * nd)

    def loss(apply, params, x):
        return jnp.sum(jnp.sin(apply(params, x)))

    expected = jax.value_and_grad(loss, argnums=(1, 2))(
        lambda p, x: reference.apply({"params": p["conv"]}, x), params, x
    )

    convolutions = []
    original = jax.lax.conv_general_dilated

    def counting(*args, **kwargs):
        convolutions.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(jax.lax, "conv_general_dilated", counting)
    got = jax.value_and_grad(loss, argnums=(1, 2))(
        lambda p, x: module.apply({"params": p}, x), params, x
    )
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (not convolutions) == pointwise


@pytest.mark.parametrize(
    "stride, dilation, padding",
    [(1, 1, "SAME"), (2, 1, [(1, 1), (1, 1)]), (1, 2, [(2, 2), (2, 2)]), (2, 3, [(1, 2), (0, 3)])],
)
def test_wide_convolutions_take_matmul_gradients_with_the_same_numbers(
    monkeypatch, stride, dilation, padding
):
    """On CPU, a k×k convolution with >= MATMUL_GRAD_MIN_CHANNELS inputs keeps XLA's forward and
    differentiates the im2col form: same value, gradients equal up to float rounding."""
    monkeypatch.setattr(layers, "MATMUL_GRAD_MIN_CHANNELS", 8)
    backward_im2col = []
    original = layers._im2col_conv
    monkeypatch.setattr(
        layers, "_im2col_conv", lambda *a: backward_im2col.append(a[2:]) or original(*a)
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 11, 8))
    common = dict(
        features=6, kernel_size=(3, 3), strides=stride, kernel_dilation=dilation, padding=padding
    )
    reference = nn.Conv(**common)
    params = reference.init(jax.random.PRNGKey(1), x)["params"]
    wide = nn.Conv(**common, conv_general_dilated=layers.conv_or_pointwise_matmul)

    def value_and_grads(module):
        return jax.value_and_grad(
            lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x))), argnums=(0, 1)
        )(params, x)

    (value, grads), (expected_value, expected_grads) = (
        value_and_grads(wide),
        value_and_grads(reference),
    )
    assert value == expected_value  # the forward pass is XLA's convolution itself
    chex.assert_trees_all_close(grads, expected_grads, rtol=1e-5, atol=1e-5)
    assert len(backward_im2col) == 1 and backward_im2col[0][0] == (stride, stride)
