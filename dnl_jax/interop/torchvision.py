"""torchvision ImageNet ResNets (`resnet18` … `resnet152`, 7×7 stem) → dnl_jax `ResNetV1b`.

torchvision keys: `conv1.weight`, `bn1.*`, `layer{s}.{i}.{conv,bn}{1,2,3}.*`,
`layer{s}.{i}.downsample.{0,1}.*`, `fc.{weight,bias}`. The stages use the same names as mmseg's
ResNetV1c (stride in the 3×3 conv, "ResNet v1.5"), so only the stem differs; the ImageNet
classifier `fc.*` is dropped. Weights do not depend on dilation, so the same variables serve any
`output_stride` (torchvision's network is `output_stride=32`; segmentation uses 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from dnl_jax.interop import mapping
from dnl_jax.interop.checkpoint_io import to_numpy
from dnl_jax.interop.segmentor import CLASSIFIER_PREFIXES, mmseg_rename, resnet_depth
from dnl_jax.models.resnet_v1b import ResNetV1b

TORCHVISION_STEM_KEY = "conv1.weight"


def torchvision_resnet_to_flax(
    state_dict: Mapping[str, Any],
    depth: int | None = None,
    *,
    output_stride: int = 32,
    strict: bool = True,
) -> tuple[Any, dict, mapping.ConversionReport]:
    """torchvision ResNet state_dict → (`ResNetV1b` module, `{'params', 'batch_stats'}`, report).

    Args:
      state_dict: e.g. `load_torch_checkpoint('resnet50-0676ba61.pth')`.
      depth: 18/34/50/101/152; read from the keys when None (and checked when given).
      output_stride: of the returned module (8 for DNLNet-style dilated backbones).
      strict: fail with a `ConversionError` on any key mismatch (besides `fc.*`).
    """
    trunk = {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    if TORCHVISION_STEM_KEY not in trunk:
        raise ValueError(
            f"no {TORCHVISION_STEM_KEY!r}: not a torchvision ResNet (first keys: "
            f"{sorted(trunk)[:6]}). An mmseg ResNetV1c (`stem.*`) converts with resnet_v1c_to_flax."
        )
    found = resnet_depth(trunk)
    if depth is not None and depth != found:
        raise ValueError(
            f"depth={depth} was asked for, but the state_dict's blocks per stage are "
            f"those of ResNet-{found}; pass depth={found} or None."
        )
    stem_shape = tuple(to_numpy(trunk[TORCHVISION_STEM_KEY]).shape)
    module = ResNetV1b(
        depth=found,
        in_channels=stem_shape[1],
        stem_channels=stem_shape[0],
        base_channels=tuple(to_numpy(trunk["layer1.0.conv1.weight"]).shape)[0],
        output_stride=output_stride,
    )
    images = jnp.zeros((1, 64, 64, module.in_channels), jnp.float32)
    variables, report = mapping.torch_to_flax(
        trunk,
        mapping.template_of(module, images),
        rename=mmseg_rename,
        strict=strict,
        what=f"torchvision ResNet-{found} state_dict",
    )
    return module, variables, report
