"""DNL I3D-R50 on Kinetics-400 (Kinetics layout), the original non-local video recipe: 32 frames
at stride 2, 224 crops; test 10 clips x 3 crops.

Prepare the data once, then evaluate a trained checkpoint (video training is not wired into
the trainer yet; dnl_jax.main refuses this config and says so):
    python -m dnl_jax.data.prepare kinetics --manual_dir RAW --data_dir data/prepared
    python -m dnl_jax.evaluate --config experiments/configs/kinetics_dnl_i3d_r50_32x2.py \
        --checkpoint CHECKPOINT_STEP_DIR --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    return recipes.video_recipe(model="dnl_i3d_r50")
