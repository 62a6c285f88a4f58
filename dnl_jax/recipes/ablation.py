"""The synthetic-scene ablation: one training recipe (the `make demo` one) shared by the DNL demo
and the same tiny model with other decode heads, so that their val mIoU differ only by the head.

    head          registry name        context block in the decode head
    dnl           dnl_tiny             DisentangledNonLocal (whitened pairwise + unary)
    pairwise      dnl_pairwise_tiny    DisentangledNonLocal, unary=False
    unary         dnl_unary_tiny       DisentangledNonLocal, pairwise=False
    nl            nl_tiny              NonLocal (embedded Gaussian)
    gc            gc_tiny              ContextBlock (GCNet)
    fcn           fcn_tiny             none (two plain convs)

Configs: `experiments/configs/synthetic_{dnl,pairwise,unary,nl,gc,fcn}_tiny.py`.

The detection counterpart (`synthetic_detection_config`): the tiny Mask R-CNN on the synthetic
detection scenes (data/synthetic_detection.py), with or without a context block at c4
(`mask_rcnn_{fcn,dnl,nl,gc}_tiny`), mmdet's 1x recipe shrunk to 300 steps.
"""

from __future__ import annotations

import ml_collections

from dnl_jax.evaluators import section
from dnl_jax.train.config import base_config

SYNTHETIC_ABLATION_MODELS = {
    "dnl": "dnl_tiny",
    "pairwise": "dnl_pairwise_tiny",
    "unary": "dnl_unary_tiny",
    "nl": "nl_tiny",
    "gc": "gc_tiny",
    "fcn": "fcn_tiny",
}


def synthetic_config(model: str = "dnl_tiny") -> ml_collections.ConfigDict:
    """The demo recipe (64×64 synthetic scenes, 7 classes, batch 16, 1000 SGD steps, lr 0.1
    poly) for the registered segmentation model `model`."""
    config = base_config()
    config.model.name = model
    config.data.synthetic.image_size = 64
    config.data.num_classes = 7
    config.data.synthetic.num_train = 4096
    config.data.synthetic.num_val = 256
    config.batch_size = 16
    config.total_steps = 1000
    config.optimizer.lr = 0.1
    config.optimizer.min_lr = 1e-4
    config.optimizer.warmup_steps = 10
    config.evals.val = section("batched", every_steps=250, batch_size=64)
    config.log_every_steps = 10
    config.checkpoint.every_steps = 250
    return config


def synthetic_detection_config(model: str = "mask_rcnn_dnl_tiny") -> ml_collections.ConfigDict:
    """The tiny detector's recipe: 64×64 synthetic detection scenes (4 classes: 2 colours × the
    beacon's 2 cues), batch 8, 300 steps (every training scene seen once), mmdet's 1x optimiser
    shrunk in time: SGD lr 0.02 momentum 0.9 weight decay 1e-4, gradient clip 35, linear warm-up
    from lr/3 over 50 steps, lr × 0.1 at steps 200 and 275 (epochs 8 and 11 of 12). COCO box and
    mask AP (pycocotools) on 64 val scenes at the end."""
    config = base_config()
    config.model.name = model
    config.data.name = "synthetic_detection"
    config.data.synthetic.image_size = 64
    config.data.num_classes = 4
    config.data.synthetic.num_train = 2400
    config.data.synthetic.num_val = 64
    config.batch_size = 8
    config.total_steps = 300
    config.optimizer.lr = 0.02
    config.optimizer.weight_decay = 1e-4
    config.optimizer.grad_clip_norm = 35.0
    config.optimizer.schedule = "step"
    config.optimizer.decay_steps = (200, 275)
    config.optimizer.warmup_steps = 50
    config.optimizer.warmup_ratio = 1 / 3
    config.evals.val = section("coco", every_steps=0, batch_size=16)
    config.log_every_steps = 10
    config.checkpoint.every_steps = 100
    return config


__all__ = ["SYNTHETIC_ABLATION_MODELS", "synthetic_config", "synthetic_detection_config"]
