"""DNL R101-D8 on Cityscapes, the official code's recipe: 769x769 crops, 60k iterations, OHEM
(thresh 0.7, min kept 100k). Published (paper): 80.15 val mIoU. Test: slide 769x769 stride 513
as mmseg's 769x769 configs; the official code's val feeds the whole 2048x1024 image instead
(--config.evals.val.mode=whole).

Prepare the data once, train, then evaluate:
    python -m dnl_jax.data.prepare cityscapes --manual_dir RAW --data_dir data/prepared
    python -m dnl_jax.main --config experiments/configs/cityscapes_dnl_r101-d8_769x769_60k_ohem.py --workdir runs/cityscapes_dnl_r101-d8_769x769_60k_ohem
    python -m dnl_jax.evaluate --config experiments/configs/cityscapes_dnl_r101-d8_769x769_60k_ohem.py \
        --checkpoint runs/cityscapes_dnl_r101-d8_769x769_60k_ohem/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.segmentation_recipe(
        dataset="cityscapes", model="dnl_r101-d8", crop_size=(769, 769), base_size=(2049, 1025),
        batch_size=8, total_steps=60_000, eval_mode="slide", eval_crop_size=(769, 769),
        eval_stride=(513, 513), ohem={"thresh": 0.7, "min_kept": 100_000})
