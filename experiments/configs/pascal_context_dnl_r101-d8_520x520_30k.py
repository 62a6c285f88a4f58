"""DNL R101-D8 on PASCAL-Context-59, the official recipe: 520x520, 30k iterations, lr 0.001,
batch 16 (weight decay 5e-4 and the slide stride 346 are our choices). Published (paper): 54.5-55.3.

Prepare the data once, train, then evaluate:
    python -m dnl_jax.data.prepare pascal_context --manual_dir RAW --data_dir data/prepared
    python -m dnl_jax.main --config experiments/configs/pascal_context_dnl_r101-d8_520x520_30k.py --workdir runs/pascal_context_dnl_r101-d8_520x520_30k
    python -m dnl_jax.evaluate --config experiments/configs/pascal_context_dnl_r101-d8_520x520_30k.py \
        --checkpoint runs/pascal_context_dnl_r101-d8_520x520_30k/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.segmentation_recipe(
        dataset="pascal_context", model="dnl_r101-d8", crop_size=(520, 520), base_size=(520, 520),
        batch_size=16, total_steps=30_000, lr=0.001, eval_mode="slide",
        eval_crop_size=(520, 520), eval_stride=(346, 346))
