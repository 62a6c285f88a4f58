"""Ablation of the demo: the tiny segmentor with the NL head (plain embedded-Gaussian non-local block), trained
with exactly the demo's recipe (`dnl_jax.recipes.ablation.synthetic_config`). Results:
experiments/results/synthetic_ablation.md.

Launch:
    python -m dnl_jax.cli.train --config experiments/configs/synthetic_nl_tiny.py --workdir runs/synthetic_nl_tiny
"""

from dnl_jax.recipes.ablation import synthetic_config


def get_config():
    return synthetic_config("nl_tiny")
