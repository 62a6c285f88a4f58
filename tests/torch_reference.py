"""Small PyTorch re-implementations used as parity references by the interop tests.

Written from the reference semantics in shared/DESIGN.md (mmseg `DisentangledNonLocal2d` on mmcv
`_NonLocalNd`), with mmcv's attribute names so their state_dicts have mmseg's keys. Also: a
helper that fills a module with random weights and batch-norm statistics, so blocks are not the
identity, and `require`, which skips without torch locally but fails in CI (CI installs it).
"""

from __future__ import annotations

import importlib
import os

import pytest


def require(module_name: str):
    """Import a test-only dependency: skip locally if absent, but never skip silently in CI."""
    if os.environ.get("CI"):
        return importlib.import_module(module_name)
    return pytest.importorskip(module_name)


torch = require("torch")
nn = torch.nn


class ConvUnit(nn.Module):
    """mmcv `ConvModule` naming: `.conv` (+ `.bn`), so keys read `name.conv.weight`, `name.bn.*`."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, *, bias: bool, bn: bool = False,
                 relu: bool = False, stride: int = 1, dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return torch.relu(x) if self.relu else x


class DisentangledNonLocal2d(nn.Module):
    """mmseg's DNL block: whitened pairwise softmax with temperature + unary softmax on conv_mask.

        out = x + conv_out(softmax_j((θ_i−μ_θ)ᵀ(φ_j−μ_φ) / √C' / T) g_j + Σ_j softmax_j(m_j) g_j)
    """

    def __init__(self, channels: int, reduction: int = 2, temperature: float = 0.05):
        super().__init__()
        inner = channels // reduction
        self.inner, self.temperature = inner, temperature
        self.g = ConvUnit(channels, inner, bias=True)
        self.theta = ConvUnit(channels, inner, bias=True)
        self.phi = ConvUnit(channels, inner, bias=True)
        self.conv_out = ConvUnit(inner, channels, bias=False, bn=True)
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, x):
        n, _, h, w = x.shape
        value = self.g(x).flatten(2).transpose(1, 2)  # [n, hw, C']
        query = self.theta(x).flatten(2).transpose(1, 2)
        key = self.phi(x).flatten(2).transpose(1, 2)
        query = query - query.mean(dim=1, keepdim=True)
        key = key - key.mean(dim=1, keepdim=True)
        logits = query @ key.transpose(1, 2) / self.inner**0.5 / self.temperature
        pairwise = logits.softmax(dim=-1) @ value  # [n, hw, C']
        unary = self.conv_mask(x).flatten(2).softmax(dim=-1) @ value  # [n, 1, C']
        y = (pairwise + unary).transpose(1, 2).reshape(n, self.inner, h, w)
        return x + self.conv_out(y)


@torch.no_grad()
def randomize(module, seed: int = 0, std: float = 0.2):
    """Random weights, biases and batch-norm statistics (so no block is the identity); eval mode.

    Conv/linear weights and all biases ~ N(0, std²); norm scales ~ U(0.5, 1.5); running means
    ~ N(0, 0.3²); running variances ~ U(0.5, 1.5).
    """
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor, low=None):
        if low is None:
            tensor.copy_(std * torch.randn(tensor.shape, generator=generator))
        else:
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + low)

    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            fill(sub.weight, 0.5)
            fill(sub.bias)
            sub.running_mean.copy_(0.3 * torch.randn(sub.running_mean.shape, generator=generator))
            fill(sub.running_var, 0.5)
        elif isinstance(sub, (nn.Conv2d, nn.Linear)):
            fill(sub.weight)
            if sub.bias is not None:
                fill(sub.bias)
    return module.eval()


def torch_output_and_input_grad(module, x_nchw, cotangent_nchw):
    """PyTorch output and d(sum(out · cotangent))/dx, as numpy NCHW arrays."""
    x = torch.tensor(x_nchw, requires_grad=True)
    out = module(x)
    (out * torch.tensor(cotangent_nchw)).sum().backward()
    return out.detach().numpy(), x.grad.numpy()


def flax_output_and_input_grad(apply_fn, x_nchw, cotangent_nchw):
    """The same for a Flax `apply_fn(x_nhwc)`, converted back to NCHW."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    to_nhwc, to_nchw = (0, 2, 3, 1), (0, 3, 1, 2)
    cotangent = np.transpose(cotangent_nchw, to_nhwc)
    out, vjp = jax.vjp(apply_fn, np.transpose(x_nchw, to_nhwc))
    (grad,) = vjp(cotangent)
    return np.transpose(np.asarray(out), to_nchw), np.transpose(np.asarray(grad), to_nchw)


def relative_error(actual, expected) -> float:
    """max |actual − expected| / max |expected|."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
