"""dnl_jax models: dilated ResNet-V1c + DNL/NL/GC/FCN heads for segmentation, ResNet-3D with
non-local blocks for video, Mask R-CNN (detection/), and the registry: a table of model names.
The bundles (module + loss + metrics) are built by the tasks:

    bundle = dnl_jax.tasks.get_model('dnl_r101-d8', num_classes=19)
    variables = bundle.module.init(jax.random.key(0), images, train=False)
    outputs, updates = bundle.module.apply(variables, images, train=True,
                                           rngs={'dropout': key}, mutable=['batch_stats'])
    loss, scalars = bundle.loss_fn(outputs, batch)
"""

from dnl_jax.models.heads import DNLHead, FCNHead, GCHead, NLHead
from dnl_jax.models.registry import MODEL_NAMES, init_variables
from dnl_jax.models.residual import BasicBlock, Bottleneck, ContextSpec
from dnl_jax.models.resnet import ResNetV1c
from dnl_jax.models.segmentor import Segmentor, build_segmentor
from dnl_jax.models.summary import count_params, module_summary, summary_flops
from dnl_jax.models.video import ResNet3D, VideoClassifier, build_video_classifier

__all__ = [
    "init_variables",
    "MODEL_NAMES",
    "build_segmentor",
    "build_video_classifier",
    "module_summary",
    "summary_flops",
    "count_params",
    "ResNetV1c",
    "ResNet3D",
    "BasicBlock",
    "Bottleneck",
    "ContextSpec",
    "FCNHead",
    "DNLHead",
    "NLHead",
    "GCHead",
    "Segmentor",
    "VideoClassifier",
]
