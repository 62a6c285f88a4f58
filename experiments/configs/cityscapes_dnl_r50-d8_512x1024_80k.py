"""DNL R50-D8 on Cityscapes, mmseg recipe (512x1024 crops, batch 8, 80k iterations,
whole-image test at 2048x1024 as mmseg's config).

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare cityscapes --manual_dir RAW --data_dir data/prepared
    # resnet50_v1c-2cccc1ad.pth from https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth
    python -m dnl_jax.cli.pretrained resnet50_v1c resnet50_v1c-2cccc1ad.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/cityscapes_dnl_r50-d8_512x1024_80k.py --workdir runs/cityscapes_dnl_r50-d8_512x1024_80k
    python -m dnl_jax.cli.evaluate --config experiments/configs/cityscapes_dnl_r50-d8_512x1024_80k.py \
        --checkpoint runs/cityscapes_dnl_r50-d8_512x1024_80k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.cityscapes_mmseg("dnl_r50-d8")
