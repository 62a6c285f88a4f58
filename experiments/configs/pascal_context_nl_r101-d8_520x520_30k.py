"""NL R101-D8 on PASCAL-Context-59, same recipe as the DNL config.

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare pascal_context --manual_dir RAW --data_dir data/prepared
    # 3x3resnet101-imagenet.pth from https://drive.google.com/open?id=1bUzCKazlh8ElGVYWlABBAb0b0uIqFgtR
    python -m dnl_jax.cli.pretrained deepbase_resnet101 3x3resnet101-imagenet.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/pascal_context_nl_r101-d8_520x520_30k.py --workdir runs/pascal_context_nl_r101-d8_520x520_30k
    python -m dnl_jax.cli.evaluate --config experiments/configs/pascal_context_nl_r101-d8_520x520_30k.py \
        --checkpoint runs/pascal_context_nl_r101-d8_520x520_30k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.pascal_context_official("nl_r101-d8")
