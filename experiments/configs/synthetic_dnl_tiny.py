"""The demo: the tiny DNL segmentor on the embedded synthetic scenes, 32x32, CPU-friendly
(about 1.5 minutes on 2 CPU cores, compilation included; val mIoU from ~0.15 to ~0.68).

Launch (what `make demo` runs):
    python -m dnl_jax.main --config experiments/configs/synthetic_dnl_tiny.py --workdir runs/demo
Overrides, e.g. pmap and a shorter run:
    ... --config.parallelism=pmap --config.total_steps=50
"""

from dnl_jax.train.config import base_config


def get_config():
    config = base_config()
    config.model.name = "dnl_tiny"
    config.data.image_size = 32
    config.data.num_classes = 5
    config.data.num_train = 4096
    config.data.num_val = 256
    config.batch_size = 16
    config.eval_batch_size = 64
    config.total_steps = 1500
    config.optimizer.lr = 0.1
    config.optimizer.min_lr = 1e-4
    config.optimizer.warmup_steps = 10
    config.eval_every_steps = 250
    config.log_every_steps = 10
    config.checkpoint.every_steps = 500
    return config
