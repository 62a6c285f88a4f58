"""A tiny Mask R-CNN and a hand-made padded batch for the detection tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.models.detection import mask_rcnn, targets

# XLA:CPU's backend optimisations halve nothing the tests check but double their compile time
# (tiny train step: 17.6 → 9.4 CPU-seconds); tests compile with them off.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def tiny_mask_rcnn(**overrides) -> mask_rcnn.MaskRCNN:
    """ResNet-18 with 8 base channels, 16-channel FPN and heads, few proposals and samples."""
    settings = dict(
        num_classes=3,
        depth=18,
        stem_channels=8,
        base_channels=8,
        fpn_channels=16,
        fc_channels=32,
        conv_channels=16,
        rpn_train=(48, 24),
        rpn_test=(48, 24),
        rpn_sampler=targets.SamplerConfig(32, 0.5),
        rcnn_sampler=targets.SamplerConfig(16, 0.25),
        max_detections=5,
        roi_grid_limit=2,
    )
    settings.update(overrides)
    return mask_rcnn.MaskRCNN(**settings)


def tiny_batch(size: int = 64, padding: int = 5) -> dict:
    """Two images with 4 rectangular instances each (+ `padding` − 4 invalid slots)."""
    rng = np.random.default_rng(0)
    boxes = np.zeros((2, padding, 4), np.float32)
    masks = np.zeros((2, padding, size, size), np.float32)
    for image in range(2):
        for slot in range(4):
            x, y = rng.integers(0, size // 2, 2)
            w, h = rng.integers(12, size // 2, 2)
            boxes[image, slot] = [x, y, x + w, y + h]
            masks[image, slot, y : y + h, x : x + w] = 1
    return {
        "image": jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32),
        "image_size": jnp.full((2, 2), float(size)),
        "image_id": jnp.array([0, 1]),
        "gt_boxes": jnp.asarray(boxes),
        "gt_labels": jnp.asarray(rng.integers(0, 3, (2, padding)), jnp.int32),
        "gt_masks": jnp.asarray(masks),
        "gt_valid": jnp.arange(padding)[None].repeat(2, 0) < 4,
    }
