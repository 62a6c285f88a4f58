"""NL I3D-R50 on Kinetics-400, the original non-local recipe (the DNL baseline).

Prepare the data once, train, then evaluate:
    python -m dnl_jax.data.prepare kinetics --manual_dir RAW --data_dir data/prepared
    python -m dnl_jax.main --config experiments/configs/kinetics_nl_i3d_r50_32x2.py --workdir runs/kinetics_nl_i3d_r50_32x2
    python -m dnl_jax.evaluate --config experiments/configs/kinetics_nl_i3d_r50_32x2.py \
        --checkpoint runs/kinetics_nl_i3d_r50_32x2/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.video_recipe(model="nl_i3d_r50")
