"""Ablation of the demo: the tiny segmentor with the GC head (GCNet global context block), trained
with exactly the demo's recipe (`dnl_jax.recipes.ablation.synthetic_config`). Results:
experiments/results/synthetic_ablation.md.

Launch:
    python -m dnl_jax.cli.train --config experiments/configs/synthetic_gc_tiny.py --workdir runs/synthetic_gc_tiny
"""

from dnl_jax.recipes.ablation import synthetic_config


def get_config():
    return synthetic_config("gc_tiny")
