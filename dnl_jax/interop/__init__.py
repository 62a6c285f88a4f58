"""PyTorch (mmcv / mmseg / mmaction2 / mmdet / torchvision) weights ↔ dnl_jax Flax variables,
with safe loading.

    state_dict = load_torch_checkpoint("dnl_block.pth")      # no pickled code is run
    variables = mmseg_to_flax(state_dict)                       # strict: fails on any mismatch
    module, _ = block_for_state_dict(state_dict)
    y = module.apply(variables, x_nhwc)
"""

from dnl_jax.interop.checkpoint_io import load_torch_checkpoint, unwrap_state_dict
from dnl_jax.interop.mapping import (
    ConversionError,
    ConversionReport,
    flax_to_torch_state_dict,
    merge_variables,
    torch_to_flax,
)
from dnl_jax.interop.mmaction import flax_video_to_mmaction_state_dict, mmaction_to_flax
from dnl_jax.interop.mmdet import mmdet_to_flax
from dnl_jax.interop.mmseg import (
    block_for_state_dict,
    block_to_flax,
    flax_block_to_torch_state_dict,
    strip_prefix,
)
from dnl_jax.interop.segmentor import (
    flax_segmentor_to_torch_state_dict,
    mmseg_to_flax,
    resnet_v1c_to_flax,
    segmentor_for_state_dict,
    segmentor_to_flax,
)
from dnl_jax.interop.torchvision import torchvision_resnet_to_flax

__all__ = [
    "ConversionError",
    "ConversionReport",
    "block_for_state_dict",
    "block_to_flax",
    "flax_block_to_torch_state_dict",
    "flax_segmentor_to_torch_state_dict",
    "flax_video_to_mmaction_state_dict",
    "flax_to_torch_state_dict",
    "load_torch_checkpoint",
    "merge_variables",
    "mmaction_to_flax",
    "mmdet_to_flax",
    "mmseg_to_flax",
    "resnet_v1c_to_flax",
    "segmentor_for_state_dict",
    "segmentor_to_flax",
    "strip_prefix",
    "torch_to_flax",
    "torchvision_resnet_to_flax",
    "unwrap_state_dict",
]
