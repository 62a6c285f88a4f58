"""layers.conv_or_pointwise_matmul: 1×1 convolutions as matmuls (a CPU speed-up), same numbers."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from dnl_jax import layers


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
        lambda p, x: reference.apply({"params": p["conv"]}, x), params, x)

    convolutions = []
    original = jax.lax.conv_general_dilated

    def counting(*args, **kwargs):
        convolutions.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(jax.lax, "conv_general_dilated", counting)
    got = jax.value_and_grad(loss, argnums=(1, 2))(
        lambda p, x: module.apply({"params": p}, x), params, x)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (not convolutions) == pointwise
