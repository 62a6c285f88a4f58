"""NL R101-D8 on ADE20K, mmseg recipe, 80k. Published (mmseg): 42.90 val mIoU.

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare ade20k --manual_dir RAW --data_dir data/prepared
    # resnet101_v1c-e67eebb6.pth from https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth
    python -m dnl_jax.cli.pretrained resnet101_v1c resnet101_v1c-e67eebb6.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/ade20k_nl_r101-d8_512x512_80k.py --workdir runs/ade20k_nl_r101-d8_512x512_80k
    python -m dnl_jax.cli.evaluate --config experiments/configs/ade20k_nl_r101-d8_512x512_80k.py \
        --checkpoint runs/ade20k_nl_r101-d8_512x512_80k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.ade20k_mmseg("nl_r101-d8", total_steps=80_000)
