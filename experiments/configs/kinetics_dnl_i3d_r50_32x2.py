"""DNL I3D-R50 on Kinetics-400 (Kinetics layout), the original non-local video recipe: 32 frames
at stride 2, 224 crops; test 10 clips x 3 crops.

Prepare the data once, fetch and convert the pretrained backbone once (torchvision's ImageNet
ResNet-50, inflated in time when training starts), then train and evaluate with the same
command as every config (top-1 of one clip per video every 40k steps, the 30-view test at the
end; rerunning the command resumes from the last checkpoint):
    python -m dnl_jax.cli.prepare kinetics --manual_dir RAW --data_dir data/prepared
    # resnet50-0676ba61.pth from https://download.pytorch.org/models/resnet50-0676ba61.pth
    python -m dnl_jax.cli.pretrained torchvision_resnet50 resnet50-0676ba61.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/kinetics_dnl_i3d_r50_32x2.py \
        --workdir runs/kinetics_dnl_i3d_r50_32x2
Evaluate a checkpoint on its own (10 clips x 3 crops):
    python -m dnl_jax.cli.evaluate --config experiments/configs/kinetics_dnl_i3d_r50_32x2.py \
        --checkpoint runs/kinetics_dnl_i3d_r50_32x2/checkpoints/400000 --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared. A short smoke run
of the same path on a small prepared set (tiny model, 4-frame 32x32 clips):
    --config.model.name=dnl_i3d_tiny --config.data.video.clip_len=4 --config.data.video.crop_size=(32,32)
    --config.data.video.short_side_range=(32,40) --config.batch_size=8 --config.total_steps=20
    --config.evals.val.short_side=0 --config.evals.val_multi_view.short_side=0
    --config.evals.val_multi_view.num_clips=2 --config.evals.val_multi_view.num_crops=1
    --config.model.pretrained='' --config.model.from_scratch=True
"""

from dnl_jax import recipes


def get_config():
    return recipes.video_recipe(model="dnl_i3d_r50")
