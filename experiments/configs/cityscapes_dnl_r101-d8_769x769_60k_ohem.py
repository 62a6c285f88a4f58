"""DNL R101-D8 on Cityscapes, the official DNL code's recipe (yinmh17/DNL-Semantic-Segmentation
scripts/seg/cityscapes/run_fs_res101_nonlocal_in_cityscapes_seg.sh with
configs/seg/cityscapes/NLin_fcn_cityscapes_seg.conf; see recipes.cityscapes_official_ohem): its
own block (head 'dnl_official': value C->C, no output conv, scalar gamma on the pairwise term),
its deep-base ImageNet ResNet-101 (stem 64-64-128), 769x769 crops, batch 8 (4 GPUs x 2), 60k
iterations, OHEM (thresh 0.7, 100k pixels per GPU of 2 images = 50k per image) with its class
weights, loss over the kept pixels, align_corners True; test on the whole 2048x1024 image in
769x769 windows every 512 pixels (its 'sscrop_test', crop_stride_ratio 0.667). Published
(official code, see the README table): 80.15 val mIoU. The 'nowd' variant of its README
(NLnowd_ln conf): --config.model.kwargs.head=dnl_official_nowd and
--config.optimizer.weight_decay_multipliers="(('dnl_block/conv_query', 0.0), ('dnl_block/conv_key', 0.0))".

Prepare the data once, fetch and convert the pretrained backbone once, train, then evaluate:
    python -m dnl_jax.cli.prepare cityscapes --manual_dir RAW --data_dir data/prepared
    # 3x3resnet101-imagenet.pth from https://drive.google.com/open?id=1bUzCKazlh8ElGVYWlABBAb0b0uIqFgtR
    python -m dnl_jax.cli.pretrained deepbase_resnet101 3x3resnet101-imagenet.pth --pretrained_dir pretrained
    python -m dnl_jax.cli.train --config experiments/configs/cityscapes_dnl_r101-d8_769x769_60k_ohem.py --workdir runs/cityscapes_dnl_r101-d8_769x769_60k_ohem
    python -m dnl_jax.cli.evaluate --config experiments/configs/cityscapes_dnl_r101-d8_769x769_60k_ohem.py \
        --checkpoint runs/cityscapes_dnl_r101-d8_769x769_60k_ohem/checkpoints/STEP --split val
Overrides, e.g. another data folder: --config.data.data_dir=/data/prepared
"""

from dnl_jax import recipes


def get_config():
    config = recipes.cityscapes_official_ohem("dnl_r101-d8")
    config.model.kwargs.head = "dnl_official"
    return config
