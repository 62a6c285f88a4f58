"""Mask R-CNN structure: parameter counts vs the reference (mmdet 3.x mask-rcnn_r50_fpn)
computed by hand, context-block placement, frozen stages, bad input, a bf16 forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from detection_fixtures import fast_jit, tiny_batch, tiny_mask_rcnn

from dnl_jax.data.synthetic_detection import SyntheticDetection
from dnl_jax.evaluators import coco_eval
from dnl_jax.models.detection import mask_rcnn, proposals
from dnl_jax.models.residual import ContextSpec


def _conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def reference_mask_rcnn_params(
    num_classes=80, box_head="2fc", torchvision_style=False, norms=False
):
    """Parameters of mmdet 3.x `mask-rcnn_r50_fpn` from its classes' layer shapes.

    torchvision ResNet-50 without fc: 25,557,032 − 2,049,000 = 23,508,032 (batch-norm affine
    parameters included). FPN: 1×1 laterals (256/512/1024/2048 → 256) and four 3×3 outputs, all
    with bias. RPNHead: 3×3 conv 256 + 1×1 cls (3) + 1×1 reg (12). Shared2FCBBoxHead: fc
    256·7·7 → 1024 → 1024, fc_cls K + 1, fc_reg 4K; Shared4Conv1FCBBoxHead: four 3×3 convs
    256 (bias, no norm) then one fc. FCNMaskHead: four 3×3 convs, 2×2 deconv, 1×1 to K.
    `torchvision_style` (frozen BN as buffers, K + 1 class-specific outputs everywhere) must give
    torchvision's published 44,401,393 for maskrcnn_resnet50_fpn: a check of these formulas.
    `norms` (the official DNL configs' norm_cfg in the FPN, the 4conv1fc box head and the mask
    head): those convs lose their bias and gain a norm's scale and bias.
    """

    def normed(cin, cout, k):
        return _conv(cin, cout, k, bias=not norms) + (2 * cout if norms else 0)

    batch_norm_params = 53_120  # 2 × 26,560 BN channels of ResNet-50
    backbone = 23_508_032 - (batch_norm_params if torchvision_style else 0)
    fpn = sum(normed(c, 256, 1) for c in (256, 512, 1024, 2048)) + 4 * normed(256, 256, 3)
    rpn = _conv(256, 256, 3) + _conv(256, 3, 1) + _conv(256, 12, 1)
    outputs = num_classes + 1 if torchvision_style else num_classes
    if box_head == "2fc":
        shared = _conv(256 * 49, 1024, 1) + _conv(1024, 1024, 1)
    else:
        shared = 4 * normed(256, 256, 3) + _conv(256 * 49, 1024, 1)
    box = shared + _conv(1024, num_classes + 1, 1) + _conv(1024, 4 * outputs, 1)
    mask = 4 * normed(256, 256, 3) + _conv(256, 256, 2) + _conv(256, outputs, 1)
    return backbone + fpn + rpn + box + mask


def test_reference_formula_reproduces_torchvision_published_count():
    assert reference_mask_rcnn_params(90, torchvision_style=True) == 44_401_393


def _count(model, size=64):
    image = jnp.zeros((1, size, size, 3))
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, method=model.build), image)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def test_parameter_counts_match_the_reference_structure():
    assert _count(mask_rcnn.MaskRCNN()) == reference_mask_rcnn_params() == 44_396_336
    assert _count(mask_rcnn.MaskRCNN(box_head="4conv1fc")) == reference_mask_rcnn_params(
        box_head="4conv1fc"
    )
    official = mask_rcnn.MaskRCNN(
        box_head="4conv1fc", head_norm="batch", neck_norm="batch", mask_norm="batch"
    )
    assert _count(official) == reference_mask_rcnn_params(box_head="4conv1fc", norms=True)
    # A DNL block on res4's 1024 channels, inner 256: θ, φ, g 1×1 with bias, conv_mask 1024 → 1
    # with bias, conv_out 256 → 1024 without bias + BN (mmseg's block; 1,052,417), once for c4
    # and four times for c4 + c5's three 2048-channel blocks.
    dnl = ContextSpec("dnl", "after_add", reduction=4)
    block = lambda c: 3 * _conv(c, c // 4, 1) + _conv(c, 1, 1) + c * c // 4 + 2 * c  # noqa
    c4 = mask_rcnn.MaskRCNN(context=dnl, context_block_indices=((), (), (-2,), ()))
    assert _count(c4) - 44_396_336 == block(1024) == 1_052_417
    both = mask_rcnn.MaskRCNN(context=dnl, context_block_indices=((), (), (-2,), (0, 1, 2)))
    assert _count(both) - 44_396_336 == block(1024) + 3 * block(2048)


def test_context_block_sits_in_the_chosen_block_and_stage_one_is_frozen():
    model = tiny_mask_rcnn(
        context=ContextSpec("gc", "after_add"), context_block_indices=((), (), (-2,), ())
    )
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.array([[64, 64]])
    )
    backbone = shapes["params"]["backbone"]
    with_block = [name for name, sub in backbone.items() if "gc_block" in sub]
    assert with_block == ["layer3_0"]  # depth 18: res4 has 2 blocks, −2 is the first
    mask = mask_rcnn.frozen_stage_mask(shapes["params"])
    assert (
        not mask["backbone"]["conv1"]["kernel"]
        and not mask["backbone"]["layer1_1"]["conv2"]["kernel"]
    )
    assert (
        mask["backbone"]["layer2_0"]["conv1"]["kernel"]
        and mask["neck"]["lateral_convs_0"]["kernel"]
    )


def test_neck_and_mask_norms_have_bias_free_convs_and_train_their_statistics():
    """neck_norm / mask_norm 'batch': every FPN conv and mask-head conv has a bias-free conv and
    a batch norm (the P6 pool none); training calls update their running statistics."""
    model = tiny_mask_rcnn(neck_norm="batch", mask_norm="batch")
    batch = tiny_batch()
    variables = fast_jit(lambda key: model.init(key, batch["image"][:1], method=model.build))(
        jax.random.key(0)
    )
    neck, mask = variables["params"]["neck"], variables["params"]["mask_head"]
    assert sorted(neck) == sorted(
        [f"{kind}_{i}" for kind in ("lateral_convs", "fpn_convs") for i in range(4)]
    )
    for convs in (neck, {k: v for k, v in mask.items() if k.startswith("convs_")}):
        assert len(convs) in (4, 8)
        for conv in convs.values():
            assert sorted(conv) == ["bn", "conv"] and "bias" not in conv["conv"]

    def train_forward(m, image, rois):
        return m._features(image, True), m.mask_head(rois, train=True)

    rois = jnp.asarray(np.random.default_rng(0).normal(size=(3, 14, 14, 16)), jnp.float32)
    _, updated = fast_jit(
        lambda v: model.apply(
            v, batch["image"], rois, method=train_forward, mutable=["batch_stats"]
        )
    )(variables)
    for head in ("neck", "mask_head"):
        before = jax.tree.leaves(variables["batch_stats"][head])
        after = jax.tree.leaves(updated["batch_stats"][head])
        assert len(before) == len(after) > 0
        assert all(not np.allclose(b, a) for b, a in zip(before, after, strict=False))


def test_image_not_padded_to_32_is_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        jax.eval_shape(
            tiny_mask_rcnn().init,
            jax.random.key(0),
            jnp.zeros((1, 60, 64, 3)),
            jnp.array([[60, 64]]),
        )


def test_bfloat16_forward_gives_detections_that_coco_evaluates():
    """Inference end to end in bf16, then through the COCO results / COCOeval path against the
    scene's ground truth (an untrained model: AP is only checked to be a valid number)."""
    model = tiny_mask_rcnn(dtype=jnp.bfloat16)
    scene = SyntheticDetection(1, image_size=64)[0]
    image, size = jnp.asarray(scene["image"])[None], jnp.array([[64.0, 48.0]])
    variables = fast_jit(lambda key, x: model.init(key, x, method=model.build))(
        jax.random.key(0), image
    )
    out = fast_jit(model.apply)(variables, image, size)
    assert out["boxes"].shape == (1, 5, 4) and out["masks"].shape == (1, 5, 28, 28)
    assert bool(jnp.isfinite(out["boxes"]).all() & jnp.isfinite(out["masks"]).all())
    # Boxes are clipped to the valid (unpadded) image.
    assert float(out["boxes"][..., 0::2].max()) <= 48 and float(out["boxes"].min()) >= 0
    valid = scene["gt_valid"]
    truth = coco_eval.ground_truth_dataset(
        [
            {
                "id": 0,
                "height": 64,
                "width": 48,
                "boxes": scene["gt_boxes"][valid],
                "labels": scene["gt_labels"][valid],
                "masks": scene["gt_masks"][valid][:, :, :48],
            }
        ],
        category_ids=(1, 2, 3),
    )
    results = coco_eval.model_results(out, [0], np.array([[64, 48]]), (1, 2, 3))
    assert len(results) == int(out["valid"].sum())
    metrics, _ = coco_eval.evaluate(truth, results)
    assert 0.0 <= metrics["bbox_AP"] <= 1.0 and 0.0 <= metrics["segm_AP"] <= 1.0


def test_paste_masks_puts_the_mask_inside_its_box():
    mask = jnp.zeros((1, 4, 4)).at[0, :, :2].set(1.0)  # left half
    pasted = proposals.paste_masks(mask, jnp.array([[8.0, 4.0, 16.0, 12.0]]), 16, 24)[0] >= 0.5
    expected = np.zeros((16, 24), bool)
    expected[4:12, 8:12] = True
    np.testing.assert_array_equal(pasted, expected)
