"""DNL head on a ResNet-V1c-18-D8 on the synthetic scenes (64x64): the demo's model at a real
backbone's scale; minutes per hundred steps on a CPU, seconds on an accelerator.

Launch:
    python -m dnl_jax.cli.train --config experiments/configs/synthetic_dnl_r18.py --workdir runs/r18
"""

from dnl_jax.recipes.ablation import synthetic_config


def get_config():
    # The demo's scenes and schedule shape; a real-width backbone wants more data, steps and a
    # smaller learning rate.
    config = synthetic_config("dnl_r18-d8")
    config.data.synthetic.num_train = 8192
    config.evals.val.batch_size = 32
    config.total_steps = 2000
    config.optimizer.lr = 0.01
    config.optimizer.warmup_steps = 50
    config.log_every_steps = 20
    return config
