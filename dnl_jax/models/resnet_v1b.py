"""ResNet-V1b: `ResNetV1c` with torchvision's single 7×7 stem, so that ImageNet-pretrained
torchvision weights load exactly (`dnl_jax.interop.torchvision_resnet_to_flax`).

    stem: conv 7×7 (in → stem_channels, stride 2, padding 3, no bias) → BN → ReLU →
          3×3 max-pool (stride 2, padding 1); names `conv1`, `bn1` ↔ torchvision `conv1.weight`,
          `bn1.*`.

Everything after the stem (stages, strides/dilations per output stride, names `layer{s}_{i}`) is
`ResNetV1c`'s. torchvision's own network is the `output_stride=32` case (no dilation).
"""

from __future__ import annotations

from dnl_jax.models import residual
from dnl_jax.models.resnet import Array, ResNetV1c


class ResNetV1b(ResNetV1c):
    """`ResNetV1c` with a 7×7 stem (torchvision / mmseg `ResNetV1b` / `ResNet`). Input
    `[B, H, W, in_channels]`, output the 4 stage maps as `ResNetV1c`."""

    def _stem(self, x: Array, train: bool) -> Array:
        return residual.conv7x7_stem(self, x, train)


__all__ = ["ResNetV1b"]
