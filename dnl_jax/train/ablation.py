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
"""

from __future__ import annotations

import ml_collections

from dnl_jax.train.config import base_config, batched_eval

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
    config.data.image_size = 64
    config.data.num_classes = 7
    config.data.num_train = 4096
    config.data.num_val = 256
    config.batch_size = 16
    config.total_steps = 1000
    config.optimizer.lr = 0.1
    config.optimizer.min_lr = 1e-4
    config.optimizer.warmup_steps = 10
    config.evals.val = batched_eval(every_steps=250, batch_size=64)
    config.log_every_steps = 10
    config.checkpoint.every_steps = 250
    return config


__all__ = ["SYNTHETIC_ABLATION_MODELS", "synthetic_config"]
