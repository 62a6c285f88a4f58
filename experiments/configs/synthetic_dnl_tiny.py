"""The demo: the tiny DNL segmentor on the embedded synthetic scenes, 32x32, CPU-friendly
(about 1.5 minutes on 2 CPU cores, compilation included). The same recipe with other heads:
synthetic_{fcn,nl,gc,pairwise,unary}_tiny.py; measured results in
experiments/results/synthetic_ablation.md.

Launch (what `make demo` runs):
    python -m dnl_jax.main --config experiments/configs/synthetic_dnl_tiny.py --workdir runs/demo
Overrides, e.g. pmap and a shorter run:
    ... --config.parallelism=pmap --config.total_steps=50
"""

from dnl_jax.train.ablation import synthetic_config


def get_config():
    return synthetic_config("dnl_tiny")
