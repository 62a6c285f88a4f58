"""The tiny Mask R-CNN (ResNet-18/16 + FPN, from scratch) on the embedded synthetic detection
scenes, with the official-code DNL block after the residual add of res4's second-to-last
block (the official "c4" placement).
Recipe: dnl_jax/recipes/ablation.py:synthetic_detection_config (300 steps of batch 8, mmdet's 1x
optimiser shrunk in time); prints COCO box / mask AP (pycocotools) on the val scenes.

    python -m dnl_jax.cli.train --config experiments/configs/synthetic_detection_dnl_tiny.py \\
        --workdir runs/detection_dnl   [--config.parallelism=pmap] [--config.seed=1]
"""

from dnl_jax.recipes.ablation import synthetic_detection_config


def get_config():
    return synthetic_detection_config("mask_rcnn_dnl_tiny")
