"""mmaction2's published I3D NL R50 Kinetics-400 checkpoints run in dnl_jax: `nl_i3d_r50` with
mmaction2's time strides (`layout='mmaction'`: conv1 and pool1 stride 2 in time, 2×1×1 pool after
res2, NL blocks without the 1/√C' scale) and its test protocol (32 frames at stride 2, short side
256, 10 clips × 3 crops of 256, softmax averaged; metafile top-1: embedded Gaussian 74.73,
dot product 74.80).

Convert the checkpoint (the architecture is read from its keys; strict key report), then test:
    python -m dnl_jax.cli.convert \
        i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb_20220812-afd8f562.pth \
        runs/mmaction_i3d_nl --model auto
    python -m dnl_jax.cli.evaluate --config experiments/configs/kinetics_nl_i3d_r50_mmaction.py \
        --checkpoint runs/mmaction_i3d_nl --split val
For the dot-product checkpoint add `--nl-mode dot_product` to the conversion and
`--config.model.kwargs.nl_mode=dot_product` to the evaluation.

The same architecture also trains here from torchvision's ImageNet ResNet-50 (inflated in time
when training starts), like the other video recipes:
    python -m dnl_jax.cli.prepare kinetics --manual_dir RAW --data_dir data/prepared
    # resnet50-0676ba61.pth from https://download.pytorch.org/models/resnet50-0676ba61.pth
    python -m dnl_jax.cli.pretrained torchvision_resnet50 resnet50-0676ba61.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/kinetics_nl_i3d_r50_mmaction.py \
        --workdir runs/kinetics_nl_i3d_r50_mmaction
"""

from dnl_jax import recipes


def get_config():
    config = recipes.video_recipe(model="nl_i3d_r50", crop_size=256)
    config.model.kwargs.layout = "mmaction"
    config.model.kwargs.nl_mode = "embedded_gaussian"
    return config
