"""Target assignment, sampling and mask targets on hand-made boxes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.models.detection import boxes, targets

# Jitted once per configuration: one compile instead of one per eager op.
assign = jax.jit(targets.assign_max_iou, static_argnums=4)
sample = jax.jit(targets.sample_fixed, static_argnums=2)

GT = jnp.array([[0.0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 0, 0]])
GT_VALID = jnp.array([True, True, False])


def test_max_iou_assignment_thresholds_and_low_quality_matches():
    candidates = jnp.array(
        [
            [0.0, 0, 10, 10],  # IoU 1 with gt 0 → 1
            [0.0, 0, 10, 12],  # IoU 100/120 = 0.83 with gt 0 → 1
            [0.0, 0, 10, 20],  # IoU 0.5 with gt 0: between the RPN thresholds → ignored
            [25.0, 25, 45, 45],  # IoU 225/575 = 0.39 with gt 1: gt 1's best → low-quality match 2
            [60.0, 60, 70, 70],  # no overlap → background
            [1.0, 1, 5, 5],  # IoU 16/100 < 0.3 → background
        ]
    )
    valid = jnp.array([True] * 5 + [False])
    assigned = assign(candidates, valid, GT, GT_VALID, targets.RPN_ASSIGNER)
    assert list(assigned) == [1, 1, -1, 2, 0, -1]
    rcnn = assign(candidates, jnp.ones(6, bool), GT, GT_VALID, targets.RCNN_ASSIGNER)
    # RCNN: 0.5 ≥ pos 0.5 → gt 0; 0.39 < min_pos_iou 0.5 → background; 0.16 → background.
    assert list(rcnn) == [1, 1, 1, 0, 0, 0]


def test_image_without_instances_is_all_background():
    candidates = jnp.array([[0.0, 0, 10, 10], [5, 5, 8, 8]])
    assigned = assign(candidates, jnp.ones(2, bool), GT, jnp.zeros(3, bool), targets.RPN_ASSIGNER)
    assert list(assigned) == [0, 0]


def test_sampler_caps_positives_and_fills_with_negatives():
    assigned = jnp.array([1] * 10 + [0] * 30 + [-1] * 5)
    config = targets.SamplerConfig(num=16, pos_fraction=0.25)
    index, valid = sample(jax.random.key(0), assigned, config)
    picked = np.asarray(assigned)[np.asarray(index)]
    assert bool(valid.all()) and list(picked[:4]) == [1] * 4 and list(picked[4:]) == [0] * 12
    assert len(set(np.asarray(index).tolist())) == 16
    # Few candidates: 2 positives, 3 negatives, the rest of the 16 slots invalid.
    few = jnp.array([1, 0, 0, 1, 0] + [-1] * 20)
    index, valid = sample(jax.random.key(1), few, config)
    assert int(valid.sum()) == 5
    assert sorted(np.asarray(index)[:2].tolist()) == [0, 3]
    assert sorted(np.asarray(index)[2:5].tolist()) == [1, 2, 4]


def test_rcnn_targets_add_gts_as_proposals_and_encode_deltas():
    proposals = jnp.array([[1.0, 1, 11, 11], [50, 50, 60, 60]])
    rcnn = jax.jit(
        functools.partial(
            targets.rcnn_targets,
            num_classes=9,
            sampler=targets.SamplerConfig(num=6, pos_fraction=0.5),
        )
    )
    out = rcnn(jax.random.key(0), proposals, jnp.ones(2, bool), GT, jnp.array([3, 7, 0]), GT_VALID)
    valid = np.asarray(out["label_weight"]) > 0
    # Candidates: gt 0, gt 1 (positives), the padded gt (invalid), 2 proposals (1 pos, 1 neg).
    assert valid.sum() == 4 and np.asarray(out["delta_weight"]).sum() == 3
    assert sorted(np.asarray(out["labels"])[:3].tolist()) == [3, 3, 7]
    assert int(out["labels"][3]) == 9
    for roi, label, delta, weight in zip(
        out["rois"], out["labels"], out["deltas"], out["delta_weight"], strict=False
    ):
        if weight:
            gt = GT[0] if int(label) == 3 else GT[1]
            np.testing.assert_allclose(boxes.RCNN_CODER.decode(roi, delta), gt, atol=1e-4)


def test_rpn_targets_mark_sampled_anchors():
    anchors = jnp.array([[0.0, 0, 10, 10], [21, 21, 41, 41], [60, 60, 70, 70], [0, 0, 10, 20]])
    out = jax.jit(targets.rpn_targets)(jax.random.key(0), anchors, GT, GT_VALID)
    assert list(out["objectness"]) == [1, 1, 0, 0]
    assert list(out["label_weight"]) == [1, 1, 1, 0]  # anchor 3 (IoU 0.5) is ignored
    assert list(out["delta_weight"]) == [1, 1, 0, 0]
    np.testing.assert_allclose(out["deltas"][0], 0, atol=1e-6)


def test_mask_targets_crop_and_resize_the_matched_gt_mask():
    masks = np.zeros((2, 16, 16), np.float32)
    masks[0, 4:12, 4:8] = 1  # left half of the box (4, 4, 12, 12)
    masks[1] = 1
    rois = jnp.array([[4.0, 4, 12, 12], [0, 0, 16, 16]])
    got = jax.jit(targets.mask_targets, static_argnums=3)(
        rois, jnp.array([0, 1]), jnp.asarray(masks), 4
    )
    np.testing.assert_array_equal(got[0], np.tile([1, 1, 0, 0], (4, 1)))
    np.testing.assert_array_equal(got[1], np.ones((4, 4)))


def test_mask_targets_from_box_crops_match_the_full_mask_targets():
    """gt masks (an ellipse and an L shape) as 56 × 56 crops inside their boxes
    (`detection_transforms.box_mask_crops`) give the mask targets of the full masks for RoIs
    around, inside and larger than the boxes, up to the crop resolution (a few boundary
    pixels), and the same targets for the gt box itself."""
    from dnl_jax.data.detection_transforms import box_mask_crops

    size = 96
    yy, xx = np.mgrid[:size, :size] + 0.5
    ellipse = ((yy - 40) / 22) ** 2 + ((xx - 30) / 17) ** 2 <= 1
    l_shape = np.zeros((size, size), bool)
    l_shape[50:90, 55:65] = True
    l_shape[80:90, 55:90] = True
    masks = np.stack([ellipse, l_shape]).astype(np.uint8)
    gt_boxes = np.array([[13, 18, 47, 62], [55, 50, 90, 90]], np.float32)
    rois = jnp.array(
        [
            [13.0, 18, 47, 62],
            [8, 10, 52, 70],
            [20, 25, 40, 50],
            [55, 50, 90, 90],
            [45, 40, 95, 95],
            [60, 70, 92, 92],
        ]
    )
    gt_index = jnp.array([0, 0, 0, 1, 1, 1])
    full = targets.mask_targets(rois, gt_index, jnp.asarray(masks), 28)
    crops = box_mask_crops(masks, gt_boxes, 56)
    assert crops.shape == (2, 56, 56) and crops[1, -1].all()  # the L's foot fills the box bottom
    cropped = targets.mask_targets_from_crops(
        rois, gt_index, jnp.asarray(gt_boxes), jnp.asarray(crops), 28
    )
    disagree = np.asarray(full != cropped).reshape(len(rois), -1).mean(-1)
    assert disagree.max() < 0.03, disagree
    assert disagree[[0, 3]].max() < 0.015  # the gt box itself: curved-boundary pixels only
    assert float(np.asarray(full).sum()) > 0.2 * full.size
