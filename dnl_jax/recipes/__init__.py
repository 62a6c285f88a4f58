"""The published training/evaluation recipes as the trainer's ConfigDicts.

Every recipe starts from `dnl_jax.train.config.base_config()` (the one schema; see there for
every key) and sets what the recipe fixes: model.name, model.kwargs (e.g. ohem), data.name,
data.num_classes, data.data_dir, its task's section of config.data (segmentation: crop_size
(h, w), base_size (long, short) for the random resize (ratio ratio_range) and the test resize,
cat_max_ratio), batch_size (global), total_steps, optimizer.lr / momentum / weight_decay,
optimizer.poly_power and optimizer.min_lr (poly: (lr - min)(1 - t/T)^p + min), the per-image
evaluator `evals.val` (type 'segmentation': mode 'whole'|'slide', crop_size, stride, scales,
flip), and the evaluation/checkpoint intervals: checkpoints every 10 % of the run (the detection
recipe: every epoch) or every `SAVE_EVERY_SECONDS` of wall time, whichever comes first, so a
preempted multi-day run loses at most that much.

Initialisation (dnl_jax/train/initialisation.py): every recipe names its ImageNet backbone in
model.pretrained (mmseg recipes open-mmlab's resnet{50,101}_v1c, the official DNL code's
recipes its deep-base ResNet-101, video recipes torchvision's ResNet-50). mmseg's per-parameter
options are set under the names the trainer reads: model.kwargs.loss_normalizer ('all':
mmseg's CrossEntropyLoss divides by every pixel, ignored ones included; 'kept': the official
code's mean over the pixels kept), model.kwargs.align_corners (mmseg's 769x769 configs and the
official code resize with True) and optimizer.weight_decay_multipliers (mmengine custom_keys:
(substring of the '/'-joined parameter path, multiplier) pairs).

COCO detection recipes (`coco_mask_rcnn`) set config.data.detection: base_size (the (long,
short) resize scale), canvas (the fixed padded size), max_instances, filter_empty_gt,
mask_crop_size; and mmdet's step schedule (optimizer.schedule 'step', decay_steps,
warm-up), gradient clipping, the frozen stem and first stage (optimizer.frozen) and the COCO
evaluator `evals.val` (type 'coco').

Video recipes set config.data.video: clip_len, frame_stride, short_side_range, a square
crop_size; and the one-clip evaluator `evals.val` (type
'batched') and the test views of `evals.val_multi_view` (type 'multi_view': num_clips,
num_crops, short_side; run at the end of training and by `python -m dnl_jax.cli.evaluate`).
"""

from __future__ import annotations

import ml_collections

from dnl_jax.data import ade20k, cityscapes, pascal_context
from dnl_jax.evaluators import section
from dnl_jax.train.config import base_config

NUM_CLASSES = {
    "cityscapes": len(cityscapes.CLASSES),
    "ade20k": len(ade20k.CLASSES),
    "pascal_context": len(pascal_context.CLASSES),
}
SAVE_EVERY_SECONDS = 1800  # 30 min: the most wall time a preemption or a lost host can cost

# mmseg's dnl_r50-d8_4xb2-80k_cityscapes-769x769.py (and the r101 one that inherits it) writes
# optim_wrapper.paramwise_cfg.custom_keys theta/phi `wd_mult=0.`, but mmengine's
# DefaultOptimWrapperConstructor reads only `lr_mult` and `decay_mult` from custom keys, so
# mmseg's published runs decayed theta/phi like every other weight. The recipes follow what mmseg
# trained (no multipliers); NO_DECAY_THETA_PHI is what the config's authors meant, for
# --config.optimizer.weight_decay_multipliers.
NO_DECAY_THETA_PHI = (("theta", 0.0), ("phi", 0.0))


def mmseg_backbone(model: str) -> str:
    """open-mmlab's ImageNet ResNetV1c of an mmseg `*_r50-d8` / `*_r101-d8` model name."""
    for depth in ("50", "101"):
        if f"_r{depth}-" in model:
            return f"resnet{depth}_v1c"
    raise ValueError(f"model {model!r} names no ResNet-50/101 backbone (e.g. 'dnl_r50-d8').")


def segmentation_recipe(
    *,
    dataset: str,
    model: str,
    crop_size: tuple[int, int],
    base_size: tuple[int, int],
    batch_size: int,
    total_steps: int,
    pretrained: str,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    eval_mode: str = "whole",
    eval_crop_size=None,
    eval_stride=None,
    ohem: dict | None = None,
    loss_normalizer: str = "all",
    align_corners: bool = False,
    weight_decay_multipliers: tuple = (),
    data_dir: str = "data/prepared",
) -> ml_collections.ConfigDict:
    """An mmseg-style segmentation recipe: SGD momentum 0.9, poly 0.9 down to 1e-4, the mmseg
    train pipeline (resize 0.5-2.0, crop with cat_max_ratio 0.75, flip, photometric);
    evaluation and checkpoints every total_steps / 10 steps (mmseg's 8k of 80k). `pretrained`
    names the backbone (`dnl_jax.train.initialisation.BACKBONES`)."""
    if dataset not in NUM_CLASSES:
        raise ValueError(f"dataset {dataset!r}; choose one of {sorted(NUM_CLASSES)}.")
    if eval_mode == "slide" and (eval_crop_size is None or eval_stride is None):
        raise ValueError("eval_mode='slide' needs eval_crop_size and eval_stride.")
    c = base_config()
    c.model.name = model
    c.model.pretrained = pretrained
    c.model.kwargs.loss_normalizer = loss_normalizer
    c.model.kwargs.align_corners = align_corners
    c.optimizer.weight_decay_multipliers = tuple(weight_decay_multipliers)
    if ohem:
        c.model.kwargs.ohem = dict(ohem)
    c.data.name = dataset
    c.data.num_classes = NUM_CLASSES[dataset]
    c.data.data_dir = data_dir
    c.data.segmentation.crop_size = tuple(crop_size)
    c.data.segmentation.base_size = tuple(base_size)
    c.data.segmentation.ratio_range = (0.5, 2.0)
    c.data.segmentation.cat_max_ratio = 0.75
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.optimizer.lr = lr
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = weight_decay
    c.optimizer.poly_power = 0.9
    c.optimizer.min_lr = 1e-4
    c.optimizer.warmup_steps = 0
    c.evals.val = section(
        "segmentation",
        every_steps=max(1, total_steps // 10),
        mode=eval_mode,
        crop_size=eval_crop_size or (0, 0),
        stride=eval_stride or (0, 0),
    )
    c.checkpoint.every_steps = max(1, total_steps // 10)
    c.checkpoint.every_seconds = SAVE_EVERY_SECONDS
    c.log_every_steps = 50
    return c


def cityscapes_mmseg(model: str, total_steps: int = 80_000) -> ml_collections.ConfigDict:
    """mmseg Cityscapes 512x1024: batch 8 (4 GPUs x 2), whole-image test at 2048x1024 (mmseg's
    dnl/nonlocal/fcn 512x1024 configs keep `test_cfg=dict(mode='whole')` of
    `_base_/models/*_r50-d8.py`; only their 769x769 configs slide)."""
    return segmentation_recipe(
        dataset="cityscapes",
        model=model,
        crop_size=(512, 1024),
        base_size=(2048, 1024),
        batch_size=8,
        total_steps=total_steps,
        pretrained=mmseg_backbone(model),
    )


def cityscapes_mmseg_769(model: str, total_steps: int) -> ml_collections.ConfigDict:
    """mmseg Cityscapes 769x769 (`*_4xb2-{40k,80k}_cityscapes-769x769.py`): resize of
    (2049, 1025), 769x769 crops, batch 8 (4 x 2), align_corners True in both heads (and so in
    the loss and the test), slide test 769x769 with stride 513. (The 80k DNL configs' theta/phi
    `wd_mult=0` has no effect in mmengine: see NO_DECAY_THETA_PHI.)"""
    return segmentation_recipe(
        dataset="cityscapes",
        model=model,
        crop_size=(769, 769),
        base_size=(2049, 1025),
        batch_size=8,
        total_steps=total_steps,
        pretrained=mmseg_backbone(model),
        align_corners=True,
        eval_mode="slide",
        eval_crop_size=(769, 769),
        eval_stride=(513, 513),
    )


def ade20k_mmseg(model: str, total_steps: int = 160_000) -> ml_collections.ConfigDict:
    """mmseg ADE20K 512x512: batch 16 (4 x 4), resize to (2048, 512), whole-image test."""
    return segmentation_recipe(
        dataset="ade20k",
        model=model,
        crop_size=(512, 512),
        base_size=(2048, 512),
        batch_size=16,
        total_steps=total_steps,
        pretrained=mmseg_backbone(model),
    )


# The official code's deep-base ResNet stem ends with 128 channels (64 -> 64 -> 128), mmcv's
# ResNetV1c with 64 (32 -> 32 -> 64); its ImageNet file only loads into the wider stem.
DEEPBASE_STEM_CHANNELS = 128


def pascal_context_official(model: str) -> ml_collections.ConfigDict:
    """The official DNL code's PASCAL-Context-59 recipe (configs/seg/pcontext/*59c*.conf):
    short side resized to 520 (long side at most 1040) then randomly by 0.5-2.0, 520x520 crops,
    batch 16, 30k iterations, SGD lr 0.001 weight decay 1e-4, whole-image single-scale val
    (its test adds scales 0.5-2.0: --config.evals.val.scales), from its deep-base ResNet-101, loss
    averaged over the kept pixels. mmseg's own PASCAL-Context-59 recipe differs: 480x480 crops
    of a (520, 520) resize, lr 0.004, slide 480x480 stride 320x320."""
    c = segmentation_recipe(
        dataset="pascal_context",
        model=model,
        crop_size=(520, 520),
        base_size=(1040, 520),
        batch_size=16,
        total_steps=30_000,
        lr=0.001,
        weight_decay=1e-4,
        pretrained="deepbase_resnet101",
        loss_normalizer="kept",
        align_corners=True,
    )
    c.model.kwargs.stem_channels = DEEPBASE_STEM_CHANNELS
    return c


# The official DNL code's Cityscapes class weights (configs/seg/cityscapes/*.conf,
# loss.params.ohem_ce_loss.weight), in train-id order road ... bicycle.
OFFICIAL_CITYSCAPES_CLASS_WEIGHTS = (
    0.8373,
    0.9180,
    0.8660,
    1.0345,
    1.0166,
    0.9969,
    0.9754,
    1.0489,
    0.8786,
    1.0023,
    0.9539,
    0.9843,
    1.1116,
    0.9037,
    1.0865,
    1.0955,
    1.0865,
    1.1529,
    1.0507,
)


def cityscapes_official_ohem(model: str) -> ml_collections.ConfigDict:
    """The official DNL code's Cityscapes recipe (scripts/seg/cityscapes/run_fs_res101_
    nonlocal*_cityscapes_seg.sh with configs/seg/cityscapes/NL*_fcn_cityscapes_seg.conf):
    deep-base ResNet-101 D8, 4 GPUs x 2 = batch 8, 60k iterations, SGD lr 0.01 momentum 0.9
    wd 5e-4, poly 0.9 down to 0 (its lambda_poly), random resize 0.5-2.0 of the 2048x1024 image,
    769x769 crops (no category ratio check), flip; loss 'dsnohemce_loss': OHEM cross-entropy
    (thresh 0.7, 100k kept pixels per GPU of 2 images = 50k per image) with its class weights
    + 0.4 x the auxiliary ('dsn') cross-entropy, averaged over the kept pixels; bilinear resizes
    with align_corners=True. Test ('sscrop_test'): the image at its own size, windows of
    769x769 every int(769 x 0.667) = 512 pixels (runner/seg/fcn_segmentor_test.py), the last
    one flush with the border, logits averaged. Not reproduced: its BGR 0-255 input with the
    Caffe mean, the aspect jitter 0.9-1.1 and brightness shift (we use mmseg's photometric
    distortion)."""
    c = segmentation_recipe(
        dataset="cityscapes",
        model=model,
        crop_size=(769, 769),
        base_size=(2048, 1024),
        batch_size=8,
        total_steps=60_000,
        pretrained="deepbase_resnet101",
        loss_normalizer="kept",
        align_corners=True,
        eval_mode="slide",
        eval_crop_size=(769, 769),
        eval_stride=(512, 512),
        ohem={"thresh": 0.7, "min_kept": 50_000},
    )
    c.model.kwargs.class_weights = OFFICIAL_CITYSCAPES_CLASS_WEIGHTS
    c.model.kwargs.stem_channels = DEEPBASE_STEM_CHANNELS
    c.data.segmentation.cat_max_ratio = 1.0
    c.optimizer.min_lr = 0.0
    return c


def video_recipe(
    *,
    model: str,
    num_classes: int = 400,
    clip_len: int = 32,
    frame_stride: int = 2,
    crop_size: int = 224,
    batch_size: int = 64,
    total_steps: int = 400_000,
    data_dir: str = "data/prepared",
) -> ml_collections.ConfigDict:
    """The original non-local video recipe: 32 frames at stride 2, short side U[256, 320],
    224 crop, SGD lr 0.01 (batch 64) wd 1e-4; test 10 clips x 3 crops at short side 256.
    (The original steps the lr down at fixed iterations; we use the poly schedule.)
    Evaluation (one clip per video) and checkpoints every total_steps / 10 steps; the final
    evaluation adds the 30-view test.
    """
    c = base_config()
    c.model.name = model
    c.model.pretrained = "torchvision_resnet50"
    c.data.name = "kinetics"
    c.data.num_classes = num_classes
    c.data.data_dir = data_dir
    c.data.video.crop_size = (crop_size, crop_size)
    c.data.video.clip_len = clip_len
    c.data.video.frame_stride = frame_stride
    c.data.video.short_side_range = (256, 320)
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.optimizer.lr = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.poly_power = 0.9
    c.optimizer.min_lr = 0.0
    c.evals.val = section("batched", every_steps=max(1, total_steps // 10), short_side=256)
    c.evals.val_multi_view = section("multi_view", num_clips=10, num_crops=3, short_side=256)
    c.checkpoint.every_steps = max(1, total_steps // 10)
    c.checkpoint.every_seconds = SAVE_EVERY_SECONDS
    c.log_every_steps = 50
    return c


# COCO 2017 train images in mmdet's training set (filter_empty_gt, shorter side >= 32): the
# length of mmdet's CocoDataset train split, which sets the steps of an epoch.
COCO_TRAIN_IMAGES = 117_266
# Parameters mmdet's ResNet frozen_stages=1 does not train: the stem and res2.
FROZEN_STEM_AND_STAGE_1 = ("backbone/conv1", "backbone/bn1", "backbone/layer1_")


def coco_mask_rcnn(
    model: str,
    *,
    batch_size: int = 64,
    lr: float = 0.08,
    epochs: int = 12,
    data_dir: str = "data/prepared",
) -> ml_collections.ConfigDict:
    """The official DNL detection recipe (Howal/DNL-Object-Detection, mmdetection v1,
    configs/dnlnet/mask_rcnn_r50_*_fpn_syncabn_4conv1fc_1x*.py) for the registered Mask R-CNN
    `model`: torchvision's ImageNet ResNet-50 (stem and res2 frozen), synchronised batch norm in
    the backbone, the FPN, the 4conv1fc box head and the mask head's convs, RPN training
    proposals 2000/2000; 1333×800
    keep-ratio resize, flip 0.5, padded to a 1344×1344 canvas; SGD momentum 0.9, weight decay
    1e-4, gradient clip 35, lr linear warm-up from lr/3 over 500 steps, × 0.1 after epochs 8 and
    11 of 12. COCO box / mask AP on val2017 at the end.

    Known differences from the official code (our model follows mmdet v2+): L1 box losses
    (official: smooth L1, beta 1/9 RPN and 1 RCNN), adaptive RoIAlign sampling with aligned
    boxes (official: 2 samples, not aligned), plain synchronised batch norm where the official
    code has In-Place ABN (the same function in eval mode; ABN trains its scale as
    |weight| + eps), the mask head's norm takes its training statistics over all positive
    slots of the sampler, also those filled with other RoIs (official: the positives only), the
    frozen stage's batch norm keeps updating its statistics (mmdet keeps it in eval mode), and
    mask targets come from 112 × 112 crops of each gt mask inside its box (mask_crop_size;
    the official code crops the full-resolution mask; 0 restores that at 181 MB per image).
    """
    steps_per_epoch = -(-COCO_TRAIN_IMAGES // batch_size)
    c = base_config()
    c.model.name = model
    c.model.pretrained = "torchvision_resnet50"
    c.model.kwargs = ml_collections.ConfigDict(
        dict(
            frozen_bn=False,
            box_head="4conv1fc",
            head_norm="batch",
            neck_norm="batch",
            mask_norm="batch",
            rpn_train=(2000, 2000),
        )
    )
    c.data.name = "coco"
    c.data.num_classes = 80
    c.data.data_dir = data_dir
    c.data.detection.base_size = (1333, 800)
    c.data.detection.canvas = (1344, 1344)
    c.data.detection.max_instances = 100
    c.data.detection.filter_empty_gt = True
    c.data.detection.mask_crop_size = 112  # gt masks as 112² crops in their boxes, not 1344²
    c.batch_size = batch_size
    c.total_steps = epochs * steps_per_epoch
    c.optimizer.lr = lr
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.grad_clip_norm = 35.0
    c.optimizer.schedule = "step"
    c.optimizer.decay_steps = (8 * steps_per_epoch, 11 * steps_per_epoch)
    c.optimizer.decay_factor = 0.1
    c.optimizer.warmup_steps = 500
    c.optimizer.warmup_ratio = 1 / 3
    c.optimizer.frozen = FROZEN_STEM_AND_STAGE_1
    c.evals.val = section("coco", every_steps=0, batch_size=8)
    c.checkpoint.every_steps = steps_per_epoch
    c.checkpoint.every_seconds = SAVE_EVERY_SECONDS
    c.log_every_steps = 50
    return c
