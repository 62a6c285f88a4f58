"""Ablation of the demo: the tiny segmentor with the DNL head with the pairwise (whitened) term only, trained
with exactly the demo's recipe (`dnl_jax.recipes.ablation.synthetic_config`). Results:
experiments/results/synthetic_ablation.md.

Launch:
    python -m dnl_jax.cli.train --config experiments/configs/synthetic_pairwise_tiny.py --workdir runs/synthetic_pairwise_tiny
"""

from dnl_jax.recipes.ablation import synthetic_config


def get_config():
    return synthetic_config("dnl_pairwise_tiny")
