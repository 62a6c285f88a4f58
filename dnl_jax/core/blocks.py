"""Flax linen modules of the non-local family, channel-last `[B, *spatial, C]`, 1 to 3 spatial dims.

- `NonLocal`: mmcv's `NonLocal2d`/`NonLocal3d` (modes 'embedded_gaussian' and 'dot_product',
  optional max-pool sub-sampling of phi and g as in the video non-local network).
- `DisentangledNonLocal`: mmseg's `DisentangledNonLocal2d`: whitened pairwise attention with a
  temperature, plus a unary attention from a 1×1 conv (C→1) on the block input, both aggregating
  the same value g; `out = x + conv_out(pairwise + unary)`.
- `ContextBlock`: GCNet's global context block (the unary-only baseline of the paper).

Every block starts as the identity: the norm after `conv_out` (or the conv itself, without a norm)
is zero-initialised, as in the references. Submodule names mirror mmcv/mmseg's state_dict keys
(`g`, `theta`, `phi`, `conv_mask`, `conv_out/conv`, `conv_out/bn`, ...). The math lives in
`dnl_jax.core.ops`; these modules only project, reshape and call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.core import layers
from dnl_jax.core.attention import sharded as attention_ops

Array = jax.Array
Dtype = Any

NONLOCAL_MODES = ("embedded_gaussian", "dot_product")


def check_block_input(x: Array, reduction: int = 1) -> int:
    """Validates a channel-last block input and returns its channel count."""
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"expected a channel-last input [B, *spatial, C] with 1 to 3 spatial dims (rank 3 to "
            f"5); got rank {x.ndim}, shape {x.shape}. Add a batch axis with x[None] if missing."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"expected a floating-point input; got dtype {x.dtype}. Cast it, e.g. "
            "x.astype(jnp.float32)."
        )
    channels = x.shape[-1]
    if channels // reduction < 1:
        raise ValueError(
            f"too few channels for the reduction: {channels} input channels // reduction "
            f"{reduction} leaves no inner channels; use reduction <= {channels}."
        )
    return channels


def flatten_positions(x: Array) -> Array:
    """`[B, *spatial, C]` → `[B, N, C]` with N = prod(spatial)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


class _NonLocalBase(nn.Module):
    """Shared projections (g, theta, phi), sub-sampling and output of the non-local blocks."""

    reduction: int = 2
    use_scale: bool = True
    sub_sample: bool = False
    pool_window: Sequence[int] | None = None
    norm: str | None = "batch"
    axis_name: str | None = None
    num_groups: int = 32
    implementation: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _check(self, x: Array) -> int:
        if self.reduction < 1:
            raise ValueError(f"reduction must be a positive integer; got {self.reduction}.")
        layers.check_norm(self.norm)
        channels = check_block_input(x, self.reduction)
        if self.pool_window is not None and len(self.pool_window) != x.ndim - 2:
            raise ValueError(
                f"pool_window {tuple(self.pool_window)} needs one entry per spatial dim "
                f"({x.ndim - 2} here)."
            )
        return channels

    def _projection(self, features: int, name: str) -> layers.ConvModule:
        """1×1 conv with bias, N(0, 0.01) init: mmcv's g / theta / phi."""
        return layers.ConvModule(
            features,
            use_bias=True,
            kernel_init=layers.normal_001,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def _sub_sample(self, x: Array) -> Array:
        """Max-pool key/value positions (window 2 per spatial dim unless `pool_window`)."""
        if not self.sub_sample:
            return x
        window = tuple(self.pool_window or (2,) * (x.ndim - 2))
        return nn.max_pool(x, window, strides=window, padding="VALID")

    def _keys_values(self, x: Array, inner: int, keys: bool = True):
        """phi (keys, or None) and g (values) as `[B, M, inner]`, sub-sampled if asked."""
        g = flatten_positions(self._sub_sample(self._projection(inner, "g")(x)))
        if not keys:
            return None, g
        phi = flatten_positions(self._sub_sample(self._projection(inner, "phi")(x)))
        return phi, g

    def _queries(self, x: Array, inner: int) -> Array:
        return flatten_positions(self._projection(inner, "theta")(x))

    def _pairwise_scale(self, inner: int) -> float:
        return inner**-0.5 if self.use_scale else 1.0

    def _output(self, x: Array, y: Array, train: bool) -> Array:
        """x + conv_out(y), y `[B, N or 1, inner]` reshaped (or broadcast) to x's positions."""
        y = jnp.broadcast_to(y, (x.shape[0], flatten_positions(x).shape[1], y.shape[-1]))
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        out = layers.ConvModule(
            x.shape[-1],
            norm=self.norm,
            zero_init_norm=True,
            axis_name=self.axis_name,
            num_groups=self.num_groups,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv_out",
        )(y, train=train)
        return x + out


class NonLocal(_NonLocalBase):
    """Non-local block with mmcv `NonLocal2d`/`NonLocal3d` semantics, for 1 to 3 spatial dims.

        y_i = Σ_j f(θ(x_i), φ(x_j)) g(x_j);   out = x + conv_out(y)

    with f = softmax_j(θᵀφ / √C') ('embedded_gaussian', `use_scale`) or θᵀφ / M ('dot_product').
    θ, φ, g: 1×1 convs C → C' = C // reduction. `conv_out`: 1×1 conv C' → C followed by the norm
    (default batch norm, as mmseg's NLHead builds it; `norm=None` gives mmcv's bare `NonLocal2d`,
    whose conv_out then has a bias). `sub_sample` max-pools φ and g by `pool_window` (default 2 in
    every spatial dim; the video network uses (1, 2, 2)).

    Input `[B, *spatial, C]`, output the same shape.
    """

    mode: str = "embedded_gaussian"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        channels = self._check(x)
        if self.mode not in NONLOCAL_MODES:
            raise ValueError(
                f"unknown non-local mode {self.mode!r}; choose one of {NONLOCAL_MODES}."
            )
        inner = channels // self.reduction
        theta = self._queries(x, inner)
        phi, g = self._keys_values(x, inner)
        if self.mode == "dot_product":
            y = attention_ops.dot_product_aggregate(theta, phi, g)
        else:
            y = attention_ops.dnl_attention(
                theta,
                phi,
                g,
                scale=self._pairwise_scale(inner),
                whiten=False,
                implementation=self.implementation,
            )
        return self._output(x, y, train)


class DisentangledNonLocal(_NonLocalBase):
    """Disentangled non-local block with mmseg `DisentangledNonLocal2d` semantics and defaults.

        pairwise_i = Σ_j softmax_j((θ_i − μ_θ)ᵀ(φ_j − μ_φ) / √C' / temperature) g_j
        unary      = Σ_j softmax_j(conv_mask(x)_j) g_j            (one vector per sample)
        out        = x + conv_out(pairwise + unary)

    Ablation switches: `pairwise=False` (unary only), `unary=False` (pairwise only),
    `whiten=False` (no mean subtraction); `whiten=False, unary=False, temperature=1.0` is the plain
    embedded-Gaussian `NonLocal` block. With `sub_sample`, keys and values are max-pooled and the
    unary logits are pooled the same way, so both terms see the same key positions.

    Input `[B, *spatial, C]`, output the same shape.
    """

    temperature: float = 0.05
    pairwise: bool = True
    unary: bool = True
    whiten: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        channels = self._check(x)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}.")
        if not (self.pairwise or self.unary):
            raise ValueError("pairwise and unary are both off: the block would compute nothing.")
        inner = channels // self.reduction
        phi, g = self._keys_values(x, inner, keys=self.pairwise)
        unary_logits = None
        if self.unary:
            mask = nn.Conv(
                1,
                kernel_size=(1,) * (x.ndim - 2),
                kernel_init=layers.torch_default,
                bias_init=layers.torch_default_bias(channels),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="conv_mask",
            )(x)
            unary_logits = flatten_positions(self._sub_sample(mask))[..., 0]
        if self.pairwise:
            theta = self._queries(x, inner)
            y = attention_ops.dnl_attention(
                theta,
                phi,
                g,
                unary_logits,
                temperature=self.temperature,
                scale=self._pairwise_scale(inner),
                whiten=self.whiten,
                implementation=self.implementation,
            )
        else:
            assert unary_logits is not None  # not both off: checked above
            y = attention_ops.unary_attention(unary_logits, g)
        return self._output(x, y, train)


class ContextBlock(nn.Module):
    """GCNet global context block (mmcv `ContextBlock`), for 1 to 3 spatial dims.

        context = Σ_j softmax_j(conv_mask(x)_j) x_j        (pooling 'att'; 'avg' takes the mean)
        out     = x [· sigmoid(mul(context))] [+ add(context)]

    with add/mul = 1×1 conv C → C·ratio → LayerNorm → ReLU → 1×1 conv → C, the last conv
    zero-initialised (so the default 'channel_add' block starts as the identity).

    Input `[B, *spatial, C]`, output the same shape.
    """

    ratio: float = 1 / 4
    pooling: str = "att"
    fusion_types: Sequence[str] = ("channel_add",)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # No batch statistics or dropout here.
        channels = check_block_input(x)
        self._check_options(channels)
        planes = int(channels * self.ratio)
        kernel = (1,) * (x.ndim - 2)
        flat = flatten_positions(x)
        if self.pooling == "att":
            mask = nn.Conv(
                1,
                kernel,
                kernel_init=layers.kaiming_fan_in,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="conv_mask",
            )(x)
            context = attention_ops.unary_attention(flatten_positions(mask)[..., 0], flat)
        else:
            context = jnp.mean(flat, axis=-2, keepdims=True)
        context = context.reshape(x.shape[0], *(1,) * (x.ndim - 2), channels)
        out = x
        if "channel_mul" in self.fusion_types:
            out = out * nn.sigmoid(self._transform(context, planes, channels, "channel_mul_conv"))
        if "channel_add" in self.fusion_types:
            out = out + self._transform(context, planes, channels, "channel_add_conv")
        return out

    def _check_options(self, channels: int) -> None:
        if self.pooling not in ("att", "avg"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose 'att' or 'avg'.")
        unknown = set(self.fusion_types) - {"channel_add", "channel_mul"}
        if unknown or not self.fusion_types:
            raise ValueError(
                f"fusion_types must be a non-empty subset of ('channel_add', 'channel_mul'); got "
                f"{tuple(self.fusion_types)}."
            )
        if int(channels * self.ratio) < 1:
            raise ValueError(
                f"ratio {self.ratio} leaves no bottleneck channels for {channels} input channels."
            )

    def _transform(self, context: Array, planes: int, channels: int, name: str) -> Array:
        """1×1 conv → LayerNorm → ReLU → zero-init 1×1 conv; names follow mmcv's Sequential."""
        kernel = (1,) * (context.ndim - 2)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Conv(
            planes,
            kernel,
            kernel_init=layers.torch_default,
            bias_init=layers.torch_default_bias(channels),
            name=f"{name}_0",
            **common,
        )(context)
        h = nn.relu(nn.LayerNorm(epsilon=1e-5, name=f"{name}_1", **common)(h))
        return nn.Conv(
            channels, kernel, kernel_init=nn.initializers.zeros, name=f"{name}_3", **common
        )(h)
