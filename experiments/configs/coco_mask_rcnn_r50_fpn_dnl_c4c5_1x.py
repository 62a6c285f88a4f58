"""Mask R-CNN R50-FPN 1x on COCO 2017, official DNL blocks at c4 and in every block of c5: the
official DNL detection recipe (Howal/DNL-Object-Detection
configs/dnlnet/mask_rcnn_r50_r4_nlgcb_c4c5_fpn_syncabn_4conv1fc_1x.py; published val2017 box / mask
AP 41.2 / 37.2). Recipe and its known differences from the official code:
dnl_jax/recipes/__init__.py:coco_mask_rcnn.
Batch 16 at lr 0.02: the config sets lr 0.02 and 4 images per GPU without naming the GPU count; lr
0.02 per 16 images is mmdet's linear scaling rule.

Prepare COCO once (RAW holds train2017/, val2017/, annotations/instances_{train,val}2017.json),
fetch and convert the backbone once, then train and evaluate (rerunning resumes):
    python -m dnl_jax.cli.prepare coco --manual_dir RAW --data_dir data/prepared
    # resnet50-0676ba61.pth from https://download.pytorch.org/models/resnet50-0676ba61.pth
    python -m dnl_jax.cli.pretrained torchvision_resnet50 resnet50-0676ba61.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/coco_mask_rcnn_r50_fpn_dnl_c4c5_1x.py \\
        --workdir runs/coco_mask_rcnn_r50_fpn_dnl_c4c5_1x
Evaluate a checkpoint (COCO box / mask AP, results JSON under --output_dir):
    python -m dnl_jax.cli.evaluate --config experiments/configs/coco_mask_rcnn_r50_fpn_dnl_c4c5_1x.py \\
        --checkpoint runs/coco_mask_rcnn_r50_fpn_dnl_c4c5_1x/checkpoints/STEP --split val --output_dir preds/
"""

from dnl_jax import recipes


def get_config():
    return recipes.coco_mask_rcnn("mask_rcnn_r50_fpn_dnl_c4c5", batch_size=16, lr=0.02)
