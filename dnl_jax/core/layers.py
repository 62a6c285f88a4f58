"""Building bricks shared by blocks and models: an N-D `ConvModule` (conv → norm → activation) and
the norm factory.

Names mirror mmcv's `ConvModule` so that PyTorch weights map one to one: a module named `conv_out`
holds `conv_out/conv/{kernel,bias}` and its norm `conv_out/bn` (batch), `conv_out/gn` (group) or
`conv_out/ln` (layer), as mmcv's `conv_out.conv.weight`, `conv_out.bn.weight`, ... Convolutions
are channel-last: inputs `[B, *spatial, C]` with 1 to 3 spatial dims, kernels
`[*window, Cin, Cout]`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

NORMS = (None, "batch", "group", "layer")
# mmcv's abbreviations, used as the norm's submodule name.
NORM_NAMES = {"batch": "bn", "group": "gn", "layer": "ln"}

# PyTorch-style initialisers used by the references.
normal_001 = nn.initializers.normal(stddev=0.01)
# mmcv kaiming_init(mode='fan_out', nonlinearity='relu', distribution='normal'): untruncated.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default Conv/Linear init: kaiming_uniform(a=√5), i.e. U(±1/√fan_in).
torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> Initializer:
    """PyTorch's default conv bias init, U(±1/√fan_in)."""
    bound = fan_in**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def check_norm(norm: str | None) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}.")


def make_norm(
    norm: str,
    *,
    train: bool,
    zero_init: bool = False,
    axis_name: str | None = None,
    num_groups: int = 32,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Module:
    """A norm layer over the channel axis (-1), with PyTorch's epsilon and momentum (0.1 there).

    `zero_init` sets scale and bias to 0, as mmcv does for the output norm of a non-local block, so
    that the residual branch starts at zero.
    """
    check_norm(norm)
    scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
    name = name or NORM_NAMES[norm]
    common = dict(
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name
    )
    if norm == "batch":
        return nn.BatchNorm(
            use_running_average=not train, momentum=momentum, axis_name=axis_name, **common
        )
    if norm == "group":
        return nn.GroupNorm(num_groups=num_groups, **common)
    return nn.LayerNorm(**common)


def conv_or_pointwise_matmul(
    lhs: Array,
    rhs: Array,
    window_strides,
    padding,
    *,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **kwargs,
) -> Array:
    """`lax.conv_general_dilated`, except that a 1×1 convolution is computed as a matmul, and, on
    CPU, a wide 2-D k×k convolution gets its gradients from matmuls (`conv_with_matmul_gradients`).

    1×1 = unit window, unit strides, no padding or input dilation, one group, channel-last
    (`[B, *spatial, Cin]` × `[1, ..., 1, Cin, Cout]`): then out = lhs @ rhs[..., :, :], the same
    numbers up to float rounding. Why: XLA:CPU runs 1×1 convolutions ~3.5× slower than the
    equivalent matmul (fwd+bwd, 128×128×512 → 256, measured on CPU); the non-local blocks'
    projections are all 1×1. The matmul gradients are off by default (see
    `MATMUL_GRAD_MIN_CHANNELS`).
    """
    window = rhs.shape[:-2]
    unpadded = padding in ("SAME", "VALID") or all(tuple(p) == (0, 0) for p in padding)
    plain = (
        all(d == 1 for d in (lhs_dilation or ()))
        and feature_group_count == 1
        and not kwargs
        and _channel_last(dimension_numbers, lhs.ndim)
    )
    if plain and unpadded and all(w == 1 for w in window) and all(s == 1 for s in window_strides):
        return jnp.einsum("...c,cf->...f", lhs, rhs.reshape(rhs.shape[-2:]), precision=precision)
    if (
        plain
        and precision is None
        and lhs.ndim == 4
        and MATMUL_GRAD_MIN_CHANNELS is not None
        and rhs.shape[-2] >= MATMUL_GRAD_MIN_CHANNELS
        and jax.default_backend() == "cpu"
    ):
        if isinstance(padding, str):
            dilated = [
                (w - 1) * d + 1 for w, d in zip(window, rhs_dilation or (1, 1), strict=False)
            ]
            padding = jax.lax.padtype_to_pads(lhs.shape[1:3], dilated, window_strides, padding)
        return conv_with_matmul_gradients(
            lhs,
            rhs,
            tuple(window_strides),
            tuple(tuple(p) for p in padding),
            tuple(rhs_dilation or (1, 1)),
        )
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        **kwargs,
    )


# Input channels from which a CPU k×k convolution takes its gradients from im2col matmuls
# (`conv_with_matmul_gradients`); None = never (the default). Measured
# (experiments/benchmarks/RESULTS.md (g), (i)): on the 2 cores shared by 7 jobs (load ~20) the
# matmul gradients cut a wide layer's fwd+bwd by 25-46% and the DNL R50-D8 step (2×256²) by
# 28%, but on the quiet machine the same step was slower with them (7.55 s vs 5.89 s median of 3
# interleaved rounds), so they stay opt-in (e.g. 256) until a quiet-machine benchmark says
# otherwise.
MATMUL_GRAD_MIN_CHANNELS: int | None = None


def _im2col_conv(lhs: Array, rhs: Array, strides, padding, dilation) -> Array:
    """The convolution as one matmul over its patches: `[B, H, W, Cin]` × `[kh, kw, Cin, Cout]`
    → `[B, Ho, Wo, Cout]` (patches `[B, Ho, Wo, kh·kw·Cin]`, tap-major like `rhs`)."""
    padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    window = rhs.shape[:2]
    out = [
        (padded.shape[1 + a] - (window[a] - 1) * dilation[a] - 1) // strides[a] + 1
        for a in range(2)
    ]
    patches = []
    for offsets in itertools.product(*(range(w) for w in window)):
        start = [o * d for o, d in zip(offsets, dilation, strict=False)]
        limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, out, strides, strict=False)]
        patches.append(
            jax.lax.slice(
                padded, (0, *start, 0), (lhs.shape[0], *limit, lhs.shape[3]), (1, *strides, 1)
            )
        )
    return jnp.concatenate(patches, axis=-1) @ rhs.reshape(-1, rhs.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_with_matmul_gradients(
    lhs: Array, rhs: Array, strides: tuple, padding: tuple, dilation: tuple
) -> Array:
    """2-D channel-last convolution (`[B, H, W, Cin]` × `[kh, kw, Cin, Cout]`, explicit
    `padding` ((top, bottom), (left, right)), kernel `dilation`) → `[B, Ho, Wo, Cout]`.

    The forward pass is XLA's convolution (the same numbers as `lax.conv_general_dilated`); the
    backward pass differentiates the im2col form (`_im2col_conv`), so both gradients are matmuls
    (equal up to float rounding). Costs a `[B, Ho, Wo, kh·kw·Cin]` patch array in the backward.
    """
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _conv_forward(lhs, rhs, strides, padding, dilation):
    return conv_with_matmul_gradients(lhs, rhs, strides, padding, dilation), (lhs, rhs)


def _conv_backward(strides, padding, dilation, residuals, cotangent):
    _, vjp = jax.vjp(lambda x, w: _im2col_conv(x, w, strides, padding, dilation), *residuals)
    return vjp(cotangent.astype(jnp.result_type(*residuals)))


conv_with_matmul_gradients.defvjp(_conv_forward, _conv_backward)


def _channel_last(dimension_numbers, ndim: int) -> bool:
    """True for flax's layout: lhs/out `[B, *spatial, C]`, rhs `[*window, Cin, Cout]`."""
    expected = jax.lax.conv_dimension_numbers(
        (1,) * ndim,
        (1,) * ndim,
        ("N" + "HWD"[: ndim - 2] + "C", "HWD"[: ndim - 2] + "IO", "N" + "HWD"[: ndim - 2] + "C"),
    )
    return dimension_numbers == expected


class ConvModule(nn.Module):
    """conv → optional norm → optional ReLU, as mmcv's `ConvModule`, for 1 to 3 spatial dims.

    Attributes:
      features: output channels.
      kernel_size: an int (the same in every spatial dim) or a tuple with one entry per dim.
      strides, dilation: likewise.
      padding: 'SAME', 'VALID', or an int (symmetric in every dim, PyTorch-style).
      use_bias: None means "bias only without a norm" (mmcv's bias='auto').
      norm: None, 'batch', 'group' or 'layer'.
      zero_init_norm: initialise the norm's scale and bias to 0 (or the conv to 0 with no norm).
    """

    features: int
    kernel_size: int | Sequence[int] = 1
    strides: int | Sequence[int] = 1
    dilation: int | Sequence[int] = 1
    padding: str | int = 0
    use_bias: bool | None = None
    norm: str | None = None
    activation: bool = False
    zero_init_norm: bool = False
    kernel_init: Initializer = kaiming_fan_out
    bias_init: Initializer = nn.initializers.zeros
    axis_name: str | None = None
    num_groups: int = 32
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        nd = x.ndim - 2
        use_bias = self.norm is None if self.use_bias is None else self.use_bias
        zero_conv = self.zero_init_norm and self.norm is None
        padding: str | Sequence[tuple[int, int]]
        if isinstance(self.padding, int):
            padding = [(self.padding, self.padding)] * nd
        else:
            padding = self.padding
        x = nn.Conv(
            self.features,
            kernel_size=_tuple(self.kernel_size, nd),
            strides=_tuple(self.strides, nd),
            kernel_dilation=_tuple(self.dilation, nd),
            padding=padding,
            use_bias=use_bias,
            kernel_init=nn.initializers.zeros if zero_conv else self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            conv_general_dilated=conv_or_pointwise_matmul,
            name="conv",
        )(x)
        if self.norm is not None:
            x = make_norm(
                self.norm,
                train=train,
                zero_init=self.zero_init_norm,
                axis_name=self.axis_name,
                num_groups=self.num_groups,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)
        if self.activation:
            x = nn.relu(x)
        return x


def _tuple(value: int | Sequence[int], nd: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(value)
    if len(value) != nd:
        raise ValueError(f"expected {nd} values (one per spatial dim); got {value}.")
    return value
