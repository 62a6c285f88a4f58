"""The demo: the tiny DNL segmentor on the embedded synthetic scenes, 32x32, CPU-friendly
(about 2 minutes on 2 shared CPU cores, compilation and figures included; final val mIoU 0.70,
no better than the FCN head: experiments/results/synthetic_ablation.md). The same recipe with
other heads: synthetic_{fcn,nl,gc,pairwise,unary}_tiny.py.

Launch (what `make demo` runs):
    python -m dnl_jax.main --config experiments/configs/synthetic_dnl_tiny.py --workdir runs/demo
Overrides, e.g. pmap and a shorter run:
    ... --config.parallelism=pmap --config.total_steps=50
"""

from dnl_jax.train.ablation import synthetic_config


def get_config():
    return synthetic_config("dnl_tiny")
