"""Static-shape detection ops vs NumPy references written here: anchors, box coder, IoU, NMS,
RoIAlign (mmcv / torchvision loop semantics) and the FPN level mapping."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax.models.detection import anchors, boxes, nms, roi_align


def test_base_anchors_match_hand_values():
    """Stride 4, scale 8, ratio 0.5: h = 4·8·√0.5, w = 4·8/√0.5, centred on (0, 0)."""
    base = anchors.base_anchors(4)
    half_w, half_h = 16 / math.sqrt(0.5), 16 * math.sqrt(0.5)
    np.testing.assert_allclose(base[0], [-half_w, -half_h, half_w, half_h], rtol=1e-6)
    np.testing.assert_allclose(base[1], [-16, -16, 16, 16])
    np.testing.assert_allclose(base[2], [-half_h, -half_w, half_h, half_w], rtol=1e-6)


def test_grid_anchors_order_is_row_column_anchor():
    grid = anchors.grid_anchors((2, 3), 8)
    assert grid.shape == (2 * 3 * 3, 4)
    # position (y=1, x=2), anchor 1 (ratio 1): centred at (16, 8), side 64.
    np.testing.assert_allclose(grid[(1 * 3 + 2) * 3 + 1], [16 - 32, 8 - 32, 16 + 32, 8 + 32])
    levels = anchors.multi_level_anchors([(4, 4), (2, 2)], strides=(4, 8))
    assert [a.shape[0] for a in levels] == [48, 12]
    with pytest.raises(ValueError, match="one stride per FPN level"):
        anchors.multi_level_anchors([(4, 4)], strides=(4, 8))


def test_box_coder_round_trip_and_reference_stds():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 50, (20, 2))
    ref = np.concatenate([ref, ref + rng.uniform(2, 40, (20, 2))], 1).astype(np.float32)
    target = rng.uniform(0, 50, (20, 2))
    target = np.concatenate([target, target + rng.uniform(2, 40, (20, 2))], 1).astype(np.float32)
    for coder in (boxes.RPN_CODER, boxes.RCNN_CODER):
        deltas = coder.encode(ref, target)
        np.testing.assert_allclose(coder.decode(ref, deltas), target, rtol=1e-5, atol=1e-4)
    # The RCNN coder divides dx by 0.1 and dw by 0.2: a box twice as wide about the same centre
    # has deltas (0, 0, log 2 / 0.2, 0); one shifted by half its width (0.5 / 0.1, 0, 0, 0).
    delta = boxes.RCNN_CODER.encode(np.array([0.0, 0, 10, 10]), np.array([-5.0, 0, 15, 10]))
    np.testing.assert_allclose(delta, [0, 0, math.log(2) / 0.2, 0], atol=1e-6)
    shifted = boxes.RCNN_CODER.encode(np.array([0.0, 0, 10, 10]), np.array([5.0, 0, 15, 10]))
    np.testing.assert_allclose(shifted, [0.5 / 0.1, 0, 0, 0], atol=1e-6)


def test_box_decode_clamps_log_ratio_and_clips_to_image():
    huge = boxes.RPN_CODER.decode(np.array([0.0, 0, 10, 10]), np.array([0.0, 0, 50, 0]))
    np.testing.assert_allclose(huge[2] - huge[0], 10 * 1000 / 16, rtol=1e-5)
    clipped = boxes.RPN_CODER.decode(
        np.array([0.0, 0, 10, 10]), np.array([0.0, 0, 50, 0]), image_size=np.array([30.0, 40.0])
    )
    np.testing.assert_allclose(clipped, [0, 0, 40, 10], atol=1e-4)


def test_box_iou_hand_values():
    a = jnp.array([[0.0, 0, 10, 10], [0, 0, 0, 0]])
    b = jnp.array([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(boxes.box_iou(a, b), [[50 / 150, 0, 1], [0, 0, 0]], atol=1e-6)


def _nms_reference(box, score, threshold):
    """Textbook greedy NMS in NumPy (stable order for ties)."""
    order = np.argsort(-score, kind="stable")
    keep = []
    for i in order:
        if all(_iou(box[i], box[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_matches_numpy_reference(threshold):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 40, (60, 2))
    box = np.concatenate([xy, xy + rng.uniform(5, 25, (60, 2))], 1).astype(np.float32)
    score = rng.uniform(size=60).astype(np.float32)
    valid = np.ones(60, bool)
    valid[[3, 17]] = False
    expected = [i for i in _nms_reference(box[valid], score[valid], threshold)]
    expected = list(np.flatnonzero(valid)[expected])
    index, kept = jax.jit(nms.nms, static_argnums=(3, 4))(box, score, valid, threshold, 80)
    assert int(kept.sum()) == len(expected)
    assert list(np.asarray(index)[np.asarray(kept)]) == expected
    # Fewer slots than kept boxes: the best ones, in order.
    index, kept = jax.jit(nms.nms, static_argnums=(3, 4))(box, score, valid, threshold, 5)
    assert list(np.asarray(index)) == expected[:5] and bool(kept.all())


def test_multiclass_nms_keeps_classes_apart():
    box = jnp.array([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    per_class = jnp.repeat(box[:, None], 2, axis=1)
    scores = jnp.array([[0.9, 0.8], [0.7, 0.01], [0.02, 0.6]])
    multiclass = jax.jit(nms.multiclass_nms, static_argnums=(2, 3, 4))
    out_boxes, out_scores, labels, valid = multiclass(per_class, scores, 0.05, 0.5, 4)
    np.testing.assert_allclose(out_scores, [0.9, 0.8, 0.6, 0.0], atol=1e-6)
    assert list(labels[:3]) == [0, 1, 1] and list(valid) == [True, True, True, False]
    np.testing.assert_allclose(out_boxes[2], [50, 50, 60, 60])


def _bilinear_reference(feature, y, x):
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    return (
        (1 - ly) * (1 - lx) * feature[y_low, x_low]
        + (1 - ly) * lx * feature[y_low, x_high]
        + ly * (1 - lx) * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def _roi_align_reference(feature, roi, pooled, scale, aligned=True):
    """mmcv / torchvision RoIAlign forward, sampling_ratio 0, written as their loops."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = [v * scale - offset for v in roi]
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / pooled, roi_w / pooled
    grid_h, grid_w = math.ceil(roi_h / pooled), math.ceil(roi_w / pooled)
    count = max(grid_h * grid_w, 1)
    out = np.zeros((pooled, pooled, feature.shape[-1]))
    for ph in range(pooled):
        for pw in range(pooled):
            for iy in range(grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    out[ph, pw] += _bilinear_reference(feature, y, x)
            out[ph, pw] /= count
    return out


ROIS = np.array(
    [
        [3.2, 4.1, 40.7, 30.3],
        [0.0, 0.0, 63.0, 47.0],
        [-6.0, -3.0, 9.0, 12.5],
        [50.5, 40.2, 70.0, 60.0],
        [10.0, 10.0, 10.0, 10.0],
        [20.0, 5.0, 21.5, 44.0],
    ],
    np.float32,
)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_loop_reference(aligned):
    feature = np.random.default_rng(2).normal(size=(12, 16, 3)).astype(np.float32)
    align = jax.jit(roi_align.roi_align, static_argnums=(2, 3, 4, 5))
    out = align(jnp.asarray(feature), jnp.asarray(ROIS), (3, 3), 0.25, 6, aligned)
    expected = np.stack([_roi_align_reference(feature, r, 3, 0.25, aligned) for r in ROIS])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_multi_level_roi_align_uses_each_rois_level():
    rng = np.random.default_rng(3)
    maps = [rng.normal(size=(32 // s, 48 // s, 2)).astype(np.float32) for s in (1, 2, 4)]
    rois = np.array(
        [[1.0, 2.0, 9.0, 8.0], [0.0, 0.0, 30.0, 20.0], [2.0, 1.0, 46.0, 31.0]], np.float32
    )
    levels = roi_align.map_roi_levels(jnp.asarray(rois), 3, finest_scale=8.0)
    # √(8·6)=6.9 → ⌊log2(0.87)⌋ < 0 → 0; √600=24.5 → ⌊log2 3.06⌋ = 1; √(44·30)=36.3 → 2.
    assert list(levels) == [0, 1, 2]
    align = jax.jit(
        functools.partial(
            roi_align.multi_level_roi_align,
            output_size=(2, 2),
            strides=(1, 2, 4),
            finest_scale=8.0,
            grid_limit=8,
        )
    )
    out = align([jnp.asarray(m) for m in maps], jnp.asarray(rois))
    for roi, level, got in zip(rois, [0, 1, 2], out, strict=False):
        expected = _roi_align_reference(maps[level], roi, 2, 1 / (1, 2, 4)[level])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_map_roi_levels_mmdet_thresholds():
    """finest_scale 56: √area < 112 → P2, < 224 → P3, < 448 → P4, else P5."""
    sides = jnp.array([50.0, 111.9, 112.1, 223.0, 230.0, 447.0, 449.0, 2000.0])
    rois = jnp.stack([jnp.zeros_like(sides), jnp.zeros_like(sides), sides, sides], -1)
    assert list(roi_align.map_roi_levels(rois, 4)) == [0, 0, 1, 1, 2, 2, 3, 3]
