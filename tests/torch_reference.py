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


class ResidualBlock(nn.Module):
    """mmseg `BasicBlock` (expansion 1) or `Bottleneck` (expansion 4, stride in the 3×3 conv)."""

    def __init__(self, inplanes, planes, bottleneck, stride, dilation):
        super().__init__()
        self.expansion = 4 if bottleneck else 1
        out = planes * self.expansion
        self.bottleneck = bottleneck
        conv = lambda cin, cout, k, s=1, d=1: nn.Conv2d(cin, cout, k, s, d * (k // 2), d, bias=False)
        if bottleneck:
            self.conv1, self.bn1 = conv(inplanes, planes, 1), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride, dilation), nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = conv(planes, out, 1), nn.BatchNorm2d(out)
        else:  # mmseg: only the first 3×3 conv is dilated.
            self.conv1, self.bn1 = conv(inplanes, planes, 3, stride, dilation), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(conv(inplanes, out, 1, stride), nn.BatchNorm2d(out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(torch.relu(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class ResNetV1c(nn.Module):
    """mmseg `ResNetV1c`: deep stem (3×3 convs stem/2, stem/2, stem) + max-pool, 4 stages with
    strides (1, 2, 1, 1) and dilations (1, 1, 2, 4) (output stride 8), contract_dilation."""

    def __init__(self, stage_blocks, bottleneck, stem=64, base=64, in_channels=3,
                 strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), torchvision_stem=False):
        super().__init__()
        half = stem // 2
        self.torchvision_stem = torchvision_stem
        if torchvision_stem:  # torchvision / V1b: one 7×7 conv, names conv1 and bn1.
            self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
        else:
            stem_layers = []
            for cin, cout, stride in [(in_channels, half, 2), (half, half, 1), (half, stem, 1)]:
                stem_layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                nn.BatchNorm2d(cout), nn.ReLU()]
            self.stem = nn.Sequential(*stem_layers)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for stage, num_blocks in enumerate(stage_blocks):
            planes = base * 2**stage
            dilation = dilations[stage]
            blocks = []
            for index in range(num_blocks):
                first_dilation = dilation // 2 if dilation > 1 else dilation
                blocks.append(ResidualBlock(
                    inplanes, planes, bottleneck, strides[stage] if index == 0 else 1,
                    first_dilation if index == 0 else dilation))
                inplanes = planes * blocks[-1].expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x))) if self.torchvision_stem else self.stem(x)
        x = self.maxpool(x)
        outs = []
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            outs.append(x)
        return outs


class FCNHead(nn.Module):
    """mmseg `FCNHead` (eval mode): `num_convs` conv3×3-BN-ReLU, optional `conv_cat` on
    concat([x, convs(x)]), dropout (identity in eval), 1×1 `conv_seg`; `context` ('dnl', 'nl' or
    'gc') puts the block between the two convs (mmseg `DNLHead` / `NLHead` / `GCHead`)."""

    def __init__(self, in_channels, channels, num_classes, num_convs=2, concat_input=True,
                 context=None):
        super().__init__()
        unit = lambda cin: ConvUnit(cin, channels, 3, bias=False, bn=True, relu=True)
        self.convs = nn.Sequential(unit(in_channels), *[unit(channels) for _ in range(num_convs - 1)])
        self.context = context
        if context == "dnl":
            self.dnl_block = DisentangledNonLocal2d(channels)
        elif context == "nl":
            self.nl_block = NonLocal2d(channels)
        elif context == "gc":  # mmseg's GCHead uses mmcv's own ContextBlock.
            self.gc_block = require("mmcv.cnn").ContextBlock(channels, 1 / 4)
        self.conv_cat = unit(in_channels + channels) if concat_input else None
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        if self.context is None:
            out = self.convs(x)
        else:
            block = getattr(self, f"{self.context}_block")
            out = self.convs[1](block(self.convs[0](x)))
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(out)


class EncoderDecoder(nn.Module):
    """mmseg `EncoderDecoder` inference: decode head on stage 4, logits resized bilinearly
    (align_corners=False) to the image; `auxiliary_head` (FCN on stage 3) is kept for its keys."""

    def __init__(self, backbone, decode_head, auxiliary_head=None):
        super().__init__()
        self.backbone, self.decode_head, self.auxiliary_head = backbone, decode_head, auxiliary_head

    def forward(self, images):
        logits = self.decode_head(self.backbone(images)[-1])
        return torch.nn.functional.interpolate(
            logits, size=images.shape[2:], mode="bilinear", align_corners=False)


class NonLocal2d(nn.Module):
    """mmcv `NonLocal2d` (embedded Gaussian, scaled, BN after conv_out) as mmseg's NLHead builds it."""

    def __init__(self, channels, reduction=2):
        super().__init__()
        inner = channels // reduction
        self.inner = inner
        self.g = ConvUnit(channels, inner, bias=True)
        self.theta = ConvUnit(channels, inner, bias=True)
        self.phi = ConvUnit(channels, inner, bias=True)
        self.conv_out = ConvUnit(inner, channels, bias=False, bn=True)

    def forward(self, x):
        n, _, h, w = x.shape
        value = self.g(x).flatten(2).transpose(1, 2)
        logits = self.theta(x).flatten(2).transpose(1, 2) @ self.phi(x).flatten(2) / self.inner**0.5
        y = (logits.softmax(dim=-1) @ value).transpose(1, 2).reshape(n, self.inner, h, w)
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
        elif isinstance(sub, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            fill(sub.weight)
            if sub.bias is not None:
                fill(sub.bias)
    module.eval()  # Not `return module.eval()`: mmseg's and mmaction's `train()` return None.
    return module


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
