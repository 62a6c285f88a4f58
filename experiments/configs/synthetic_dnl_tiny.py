"""The demo: the tiny DNL segmentor on the embedded synthetic scenes (64x64, 7 classes, a distant
beacon decides every object's class), 1000 steps, CPU-friendly (final val mIoU 0.8714, and the
time from a fresh clone: experiments/results/demo_fresh_clone.md). Over 5 seeds on an H200, DNL
averages 0.8757 and the FCN head with the same recipe 0.8150 (experiments/results/
synthetic_ablation.md). The same recipe with other heads: synthetic_{fcn,nl,gc,pairwise,unary}_tiny.py.

Launch (what `make demo` runs, with a fresh --workdir runs/demo-<UTC date-time>):
    python -m dnl_jax.cli.train --config experiments/configs/synthetic_dnl_tiny.py --workdir runs/demo
Overrides, e.g. pmap and a shorter run:
    ... --config.parallelism=pmap --config.total_steps=50
"""

from dnl_jax.recipes.ablation import synthetic_config


def get_config():
    return synthetic_config("dnl_tiny")
