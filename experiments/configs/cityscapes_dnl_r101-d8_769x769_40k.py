"""DNL R101-D8 on Cityscapes, mmseg recipe dnl_r101-d8_4xb2-40k_cityscapes-769x769
(769x769 crops, batch 8, 40k iterations, align_corners True, slide test 769x769
stride 513). mmseg metafile: 76.39 val mIoU (single scale).

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare cityscapes --manual_dir RAW --data_dir data/prepared
    # resnet101_v1c-e67eebb6.pth from https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth
    python -m dnl_jax.cli.pretrained resnet101_v1c resnet101_v1c-e67eebb6.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/cityscapes_dnl_r101-d8_769x769_40k.py --workdir runs/cityscapes_dnl_r101-d8_769x769_40k
    python -m dnl_jax.cli.evaluate --config experiments/configs/cityscapes_dnl_r101-d8_769x769_40k.py \
        --checkpoint runs/cityscapes_dnl_r101-d8_769x769_40k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.cityscapes_mmseg_769("dnl_r101-d8", total_steps=40_000)
