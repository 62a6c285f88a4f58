"""FCN R101-D8 on Cityscapes, mmseg recipe (no context block: the lower bound).

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare cityscapes --manual_dir RAW --data_dir data/prepared
    # resnet101_v1c-e67eebb6.pth from https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth
    python -m dnl_jax.cli.pretrained resnet101_v1c resnet101_v1c-e67eebb6.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/cityscapes_fcn_r101-d8_512x1024_80k.py --workdir runs/cityscapes_fcn_r101-d8_512x1024_80k
    python -m dnl_jax.cli.evaluate --config experiments/configs/cityscapes_fcn_r101-d8_512x1024_80k.py \
        --checkpoint runs/cityscapes_fcn_r101-d8_512x1024_80k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.cityscapes_mmseg("fcn_r101-d8")
