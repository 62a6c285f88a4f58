"""The mmdet Mask R-CNN R50-FPN of the interop tests, built from the real mmdet 3.3.0 modules
(tests/openmmlab_reference.py) with reduced widths, random weights and batch-norm statistics,
and converted with `dnl_jax.interop.mmdet` (the fixtures `two_fc` and `four_conv_gc` of
tests/interop/conftest.py); the mmdetection v1 layout of its state_dict (`to_v1`)."""

import numpy as np
from openmmlab_reference import mmdet_models
from torch_reference import randomize, require

from dnl_jax.interop import mmdet

torch = require("torch")
MMDET = mmdet_models()

STEM, BASE, FPN, FC, CONV, CLASSES = 16, 16, 32, 64, 16, 3
BN = dict(type="BN", requires_grad=True)
ANCHORS = dict(
    type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]
)
GC_STAGE3 = [
    dict(
        cfg=dict(type="ContextBlock", ratio=1 / 4),
        stages=(False, False, True, False),
        position="after_conv3",
    )
]


class RoIHead(torch.nn.Module):
    """The key layout of mmdet's `StandardRoIHead` (`roi_head.bbox_head`, `roi_head.mask_head`);
    its RoI extractors have no weights."""

    def __init__(self, bbox_head, mask_head):
        super().__init__()
        self.bbox_head, self.mask_head = bbox_head, mask_head


class Detector(torch.nn.Module):
    """mmdet's `MaskRCNN` key layout (backbone, neck, rpn_head, roi_head)."""

    def __init__(self, box_head="2fc", gc=False, norms=False):
        super().__init__()
        self.backbone = MMDET.ResNet(
            depth=50,
            stem_channels=STEM,
            base_channels=BASE,
            out_indices=(0, 1, 2, 3),
            frozen_stages=1,
            norm_cfg=BN,
            norm_eval=True,
            style="pytorch",
            plugins=GC_STAGE3 if gc else None,
        )
        self.neck = MMDET.FPN(
            in_channels=[BASE * 4 * 2**s for s in range(4)],
            out_channels=FPN,
            num_outs=5,
            norm_cfg=BN if norms else None,
        )
        self.rpn_head = MMDET.RPNHead(in_channels=FPN, feat_channels=FPN, anchor_generator=ANCHORS)
        common = dict(in_channels=FPN, fc_out_channels=FC, roi_feat_size=7, num_classes=CLASSES)
        if box_head == "2fc":
            bbox_head = MMDET.Shared2FCBBoxHead(**common)
        else:
            bbox_head = MMDET.Shared4Conv1FCBBoxHead(conv_out_channels=CONV, norm_cfg=BN, **common)
        mask_head = MMDET.FCNMaskHead(
            num_convs=4,
            in_channels=FPN,
            conv_out_channels=CONV,
            num_classes=CLASSES,
            norm_cfg=BN if norms else None,
        )
        self.roi_head = RoIHead(bbox_head, mask_head)


def nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


def state_dict_of(model):
    return {key: value.numpy() for key, value in model.state_dict().items()}


def converted(box_head: str, *, gc: bool, norms: bool, seed: int):
    """(mmdet reference, our module, its converted variables, the conversion report)."""
    reference = randomize(Detector(box_head, gc=gc, norms=norms), seed=seed, fan_in_weights=True)
    module, variables, report = mmdet.mmdet_to_flax(state_dict_of(reference))
    return reference, module, variables, report


def to_v1(state_dict):
    """The mmdetection v1 layout of a v3 state_dict: no `roi_head.` prefix, the background is
    class 0 of fc_cls, has (never trained) fc_reg rows 0–3 and conv_logits channel 0."""
    rng = np.random.default_rng(7)
    v1 = {}
    for key, value in state_dict.items():
        key = key.removeprefix("roi_head.")
        if key.startswith("bbox_head.fc_cls."):
            value = np.roll(value, 1, axis=0)  # background last → first
        elif key.startswith(("bbox_head.fc_reg.", "mask_head.conv_logits.")):
            rows = 4 if "fc_reg" in key else 1
            value = np.concatenate([rng.normal(size=(rows, *value.shape[1:])), value])
        v1[key] = value.astype(np.float32)
    return v1
