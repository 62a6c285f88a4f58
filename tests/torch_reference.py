"""Shared pieces of the PyTorch parity tests.

The reference models themselves are the real ones: mmcv-lite's blocks, and mmseg's / mmaction2's
model files loaded from their wheels (tests/openmmlab_reference.py). What stays ours, and why:
- `EncoderDecoder`: mmseg's whole segmentor cannot be built without its registry, data
  preprocessor and losses; ours only chains the real backbone and heads and resizes the logits.
- `randomize`: random weights and batch-norm statistics, so no block is the identity.
- `require`: a missing reference dependency fails, everywhere (CI or not): parity tests never
  skip, so they cannot vanish from a run without a word.
"""

from __future__ import annotations

import importlib
import math


def require(module_name: str):
    """Imports a reference dependency of the parity tests; a missing one is an ImportError that
    names the fix (the test module then fails to collect), never a skip."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"{module_name} is missing: the PyTorch parity tests need it and never skip. "
            "Install the `torch` extra and the OpenMMLab wheels: `make install`, or "
            "`pip install -e '.[torch]'` and `pip install --no-deps -r requirements-openmmlab.txt`."
        ) from error


torch = require("torch")
nn = torch.nn


class EncoderDecoder(nn.Module):
    """mmseg `EncoderDecoder` whole-image inference: decode head on the backbone's feature tuple,
    logits resized bilinearly (align_corners=False) to the image; `auxiliary_head` is kept for
    its keys. Ours, not mmseg's: the real class is built through the registry with a data
    preprocessor and losses, and its test path takes `SegDataSample`s, not a tensor."""

    def __init__(self, backbone, decode_head, auxiliary_head=None):
        super().__init__()
        self.backbone, self.decode_head, self.auxiliary_head = backbone, decode_head, auxiliary_head

    def forward(self, images):
        logits = self.decode_head(self.backbone(images))
        return torch.nn.functional.interpolate(
            logits, size=images.shape[2:], mode="bilinear", align_corners=False
        )


@torch.no_grad()
def randomize(module, seed: int = 0, std: float = 0.2, fan_in_weights: bool = False):
    """Random weights, biases and batch-norm statistics (so no block is the identity); eval mode.

    Conv/linear weights and all biases ~ N(0, std²) (weights N(0, 1/fan_in) with
    `fan_in_weights`, which keeps activations O(1) through a deep net); norm scales ~ U(0.5, 1.5);
    running means ~ N(0, 0.3²); running variances ~ U(0.5, 1.5).
    """
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor, low=None, scale=std):
        if low is None:
            tensor.copy_(scale * torch.randn(tensor.shape, generator=generator))
        else:
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + low)

    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            fill(sub.weight, 0.5)
            fill(sub.bias)
            sub.running_mean.copy_(0.3 * torch.randn(sub.running_mean.shape, generator=generator))
            fill(sub.running_var, 0.5)
        elif isinstance(sub, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            fill(sub.weight, scale=sub.weight[0].numel() ** -0.5 if fan_in_weights else std)
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


class OfficialReference(torch.nn.Module):
    """The official-code DNL block (yinmh17/DNL-Semantic-Segmentation nonlocal_block.py
    `_NonLocalNd_bn`, read, not copied) as an NCHW reference: the official forward with
    downsample=False, use_out=False, out_bn=False, with_gc=True (the configurations of the official
    Cityscapes confs)."""

    def __init__(self, inplanes, planes, whiten, use_scale, temperature):
        super().__init__()
        self.conv_query = torch.nn.Conv2d(inplanes, planes, 1)
        self.conv_key = torch.nn.Conv2d(inplanes, planes, 1)
        self.conv_value = torch.nn.Conv2d(inplanes, inplanes, 1, bias=False)
        self.conv_mask = torch.nn.Conv2d(inplanes, 1, 1)
        self.gamma = torch.nn.Parameter(torch.zeros(1))
        self.whiten, self.temperature = whiten, temperature
        self.scale = math.sqrt(planes) if use_scale else 1.0

    def forward(self, x):
        n, c = x.shape[:2]
        query = self.conv_query(x).view(n, -1, x.shape[2] * x.shape[3])
        key = self.conv_key(x).view(n, query.shape[1], -1)
        value = self.conv_value(x).view(n, c, -1)
        if self.whiten == "channel":  # mean over positions, per channel
            query = query - query.mean(2, keepdim=True)
            key = key - key.mean(2, keepdim=True)
        elif self.whiten == "ln_nostd":  # one mean per sample
            query = query - query.mean(1).mean(1).view(n, 1, 1)
            key = key - key.mean(1).mean(1).view(n, 1, 1)
        sim = torch.softmax(
            torch.bmm(query.transpose(1, 2), key) / self.scale / self.temperature, dim=2
        )
        out = self.gamma * torch.bmm(sim, value.transpose(1, 2)).transpose(1, 2).reshape(x.shape)
        mask = torch.softmax(self.conv_mask(x).view(n, 1, -1), dim=2)
        out = out + torch.bmm(value, mask.permute(0, 2, 1)).unsqueeze(-1)
        return out + x
