"""The disentangled non-local block of the paper's own code, channel-last `[B, *spatial, C]`.

yinmh17/DNL-Semantic-Segmentation `NonLocal2d_bn` (model/seg/ops/nonlocal_block.py) and its
`NonLocal2d_nowd` (nonlocal_block_nowd.py); Howal/DNL-Object-Detection's `nl_gc_block` has the
same structure. It differs from mmseg's `DisentangledNonLocal2d` (dnl_jax.core.blocks):

    pairwise_i = Σ_j softmax_j(q̂_iᵀk̂_j · scale / temperature) value_j
    unary      = Σ_j softmax_j(conv_mask(x)_j) value_j              (one vector per sample)
    out        = x + gamma · pairwise + unary

- value: a 1×1 conv C → C without bias (`conv_value`), and no output conv or norm after the sum;
- gamma: one scalar, zero-initialised, on the pairwise term only, so the block starts as
  x + unary (the unary term is live from the first step);
- q = conv_query(x), k = conv_key(x): 1×1 convs C → C/reduction with bias; whitening
  'channel' subtracts each channel's mean over positions (mmseg's whitening), 'ln_nostd'
  subtracts one mean per sample over positions and channels, None nothing;
- initialisers: every conv weight N(0, 0.01), every bias 0, gamma 0.

Variants (`OFFICIAL_VARIANTS`), from the official Cityscapes confs:
- 'in' (NonLocal2d_bn with NLin_fcn_cityscapes_seg.conf): 'channel' whitening, scale 1/√C',
  temperature 0.05;
- 'nowd' (NonLocal2d_nowd with NLnowd_ln_fcn_cityscapes_seg.conf, the README's example):
  'ln_nostd' whitening, no scale and no temperature, and no weight decay on `conv_query` and
  `conv_key` (weights and biases): `NO_DECAY_PARAMETERS` are the names to give a weight-decay
  multiplier of 0 (`optimizer.weight_decay_multipliers`).

Parameter names mirror the official state_dict (`conv_query`, `conv_key`, `conv_value`,
`conv_mask`, `gamma`). Input `[B, *spatial, C]`, output the same shape.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnl_jax.core import layers
from dnl_jax.core.attention import sharded as attention_ops
from dnl_jax.core.blocks import check_block_input, flatten_positions

Array = jax.Array
Dtype = Any

WHITENINGS = ("channel", "ln_nostd", None)
OFFICIAL_VARIANTS = {
    "in": dict(whiten="channel", use_scale=True, temperature=0.05),
    "nowd": dict(whiten="ln_nostd", use_scale=False, temperature=1.0),
}
# The 'nowd' variant's parameters without weight decay ('nl' in its `nowd` list).
NO_DECAY_PARAMETERS = ("conv_query", "conv_key")


class OfficialDisentangledNonLocal(nn.Module):
    """The official code's DNL block (see the module docstring); defaults: the 'in' variant."""

    reduction: int = 2
    whiten: str | None = "channel"
    use_scale: bool = True
    temperature: float = 0.05
    unary: bool = True
    implementation: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no batch statistics or dropout here
        channels = check_block_input(x, self.reduction)
        if self.whiten not in WHITENINGS:
            raise ValueError(f"unknown whitening {self.whiten!r}; choose one of {WHITENINGS}.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}.")
        inner = channels // self.reduction
        query = flatten_positions(self._conv(inner, "conv_query", x, bias=True))
        key = flatten_positions(self._conv(inner, "conv_key", x, bias=True))
        value = flatten_positions(self._conv(channels, "conv_value", x, bias=False))
        if self.whiten == "ln_nostd":
            query = query - jnp.mean(query, axis=(-2, -1), keepdims=True)
            key = key - jnp.mean(key, axis=(-2, -1), keepdims=True)
        pairwise = attention_ops.dnl_attention(
            query,
            key,
            value,
            temperature=self.temperature,
            scale=inner**-0.5 if self.use_scale else 1.0,
            whiten=self.whiten == "channel",
            implementation=self.implementation,
        )
        gamma = self.param("gamma", nn.initializers.zeros, (1,), self.param_dtype)
        y = gamma.astype(pairwise.dtype) * pairwise
        if self.unary:
            mask = flatten_positions(self._conv(1, "conv_mask", x, bias=True))[..., 0]
            y = y + attention_ops.unary_attention(mask, value)
        return x + y.reshape(x.shape).astype(x.dtype)

    def _conv(self, features: int, name: str, x: Array, *, bias: bool) -> Array:
        """1×1 conv of x, weight N(0, 0.01), bias 0 (the official `reset_parameters`)."""
        return nn.Conv(
            features,
            (1,) * (x.ndim - 2),
            use_bias=bias,
            kernel_init=layers.normal_001,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )(x)


__all__ = ["NO_DECAY_PARAMETERS", "OFFICIAL_VARIANTS", "OfficialDisentangledNonLocal"]
