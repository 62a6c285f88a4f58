"""DNL R50-D8 on Cityscapes, mmseg recipe dnl_r50-d8_4xb2-80k_cityscapes-769x769
(769x769 crops, batch 8, 80k iterations, align_corners True, slide test 769x769 stride 513;
the mmseg config's theta/phi `wd_mult=0` is not read by mmengine, so theta/phi are decayed as
in mmseg's run: see dnl_jax.recipes.NO_DECAY_THETA_PHI). mmseg metafile: 79.36 val mIoU (single scale).

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare cityscapes --manual_dir RAW --data_dir data/prepared
    # resnet50_v1c-2cccc1ad.pth from https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth
    python -m dnl_jax.cli.pretrained resnet50_v1c resnet50_v1c-2cccc1ad.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/cityscapes_dnl_r50-d8_769x769_80k.py --workdir runs/cityscapes_dnl_r50-d8_769x769_80k
    python -m dnl_jax.cli.evaluate --config experiments/configs/cityscapes_dnl_r50-d8_769x769_80k.py \
        --checkpoint runs/cityscapes_dnl_r50-d8_769x769_80k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.cityscapes_mmseg_769("dnl_r50-d8", total_steps=80_000)
