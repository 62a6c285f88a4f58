"""dnl_jax models: dilated ResNet-V1c + DNL/NL/GC/FCN heads for segmentation, ResNet-3D with
non-local blocks for video, and a registry of named bundles (module + loss + metrics).

    bundle = dnl_jax.models.get_model('dnl_r101-d8', num_classes=19)
    variables = bundle.module.init(jax.random.key(0), images, train=False)
    outputs, updates = bundle.module.apply(variables, images, train=True,
                                           rngs={'dropout': key}, mutable=['batch_stats'])
    loss, scalars = bundle.loss_fn(outputs, batch)
"""

from dnl_jax.models.heads import DNLHead, FCNHead, GCHead, NLHead
from dnl_jax.models.registry import (
    CLASSIFICATION_OVERRIDES,
    MODEL_NAMES,
    SEGMENTATION_OVERRIDES,
    ModelBundle,
    get_model,
    init_variables,
)
from dnl_jax.models.residual import BasicBlock, Bottleneck, ContextSpec
from dnl_jax.models.resnet import ResNetV1c
from dnl_jax.models.segmentor import Segmentor, build_segmentor
from dnl_jax.models.summary import count_params, summary
from dnl_jax.models.video import ResNet3D, VideoClassifier, build_video_classifier

__all__ = [
    "get_model", "init_variables", "MODEL_NAMES", "ModelBundle", "build_segmentor", "build_video_classifier",
    "summary", "count_params", "SEGMENTATION_OVERRIDES", "CLASSIFICATION_OVERRIDES",
    "ResNetV1c", "ResNet3D", "BasicBlock", "Bottleneck", "ContextSpec",
    "FCNHead", "DNLHead", "NLHead", "GCHead", "Segmentor", "VideoClassifier",
]
