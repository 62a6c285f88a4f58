"""DNL R101-D8 on PASCAL-Context-59, the official code's recipe: short side 520, 520x520 crops,
30k iterations, lr 0.001, weight decay 1e-4, batch 16, whole-image test (recipes.
pascal_context_official). Target: the DNL paper's PASCAL-Context table (no stored
machine-readable source; cite it as the paper's).

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare pascal_context --manual_dir RAW --data_dir data/prepared
    # 3x3resnet101-imagenet.pth from https://drive.google.com/open?id=1bUzCKazlh8ElGVYWlABBAb0b0uIqFgtR
    python -m dnl_jax.cli.pretrained deepbase_resnet101 3x3resnet101-imagenet.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/pascal_context_dnl_r101-d8_520x520_30k.py --workdir runs/pascal_context_dnl_r101-d8_520x520_30k
    python -m dnl_jax.cli.evaluate --config experiments/configs/pascal_context_dnl_r101-d8_520x520_30k.py \
        --checkpoint runs/pascal_context_dnl_r101-d8_520x520_30k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.pascal_context_official("dnl_r101-d8")
