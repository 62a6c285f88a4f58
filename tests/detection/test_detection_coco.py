"""COCO box / mask AP through pycocotools on hand-made ground truth with known AP."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from dnl_jax.evaluators import coco_eval

CATEGORIES = (1, 7)


def _ground_truth():
    images = []
    for image_id, boxes, labels in (
        (3, [[2, 2, 20, 30], [30, 10, 60, 40]], [0, 1]),
        (4, [[10, 5, 50, 45]], [0]),
    ):
        masks = np.zeros((len(boxes), 48, 64), np.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes, strict=False):
            mask[y1:y2, x1:x2] = 1
        images.append(
            {
                "id": image_id,
                "height": 48,
                "width": 64,
                "boxes": np.array(boxes, float),
                "labels": np.array(labels),
                "masks": masks,
            }
        )
    return images


def _perfect_results(images, keep=lambda image_id, index: True):
    results = []
    for image in images:
        chosen = [i for i in range(len(image["boxes"])) if keep(image["id"], i)]
        results += coco_eval.detection_results(
            image["id"],
            image["boxes"][chosen],
            np.full(len(chosen), 0.9),
            image["labels"][chosen],
            CATEGORIES,
            image["masks"][chosen],
        )
    return results


def test_perfect_predictions_give_ap_one(tmp_path):
    images = _ground_truth()
    dataset = coco_eval.ground_truth_dataset(images, CATEGORIES)
    results = _perfect_results(images)
    metrics, summary = coco_eval.evaluate(dataset, results)
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    assert "Average Precision" in summary
    path = tmp_path / "results.json"
    coco_eval.write_results(results, str(path))
    loaded = json.loads(path.read_text())
    assert loaded[0]["bbox"] == [2.0, 2.0, 18.0, 28.0] and loaded[0]["category_id"] == 1


def test_missing_detection_gives_the_101_point_ap():
    """Category 1 has 2 instances; only one is detected (perfectly): precision 1 up to recall
    0.5, so 51 of COCO's 101 recall points have precision 1 → AP 51/101 for it, 1 for
    category 7, and the mean over categories."""
    images = _ground_truth()
    dataset = coco_eval.ground_truth_dataset(images, CATEGORIES)
    results = _perfect_results(images, keep=lambda image_id, index: (image_id, index) != (4, 0))
    metrics, _ = coco_eval.evaluate(dataset, results)
    expected = (51 / 101 + 1.0) / 2
    assert metrics["bbox_AP"] == pytest.approx(expected)
    assert metrics["segm_AP"] == pytest.approx(expected)


def test_no_detections_and_bad_iou_type():
    dataset = coco_eval.ground_truth_dataset(_ground_truth(), CATEGORIES)
    metrics, summary = coco_eval.evaluate(dataset, [])
    assert metrics["bbox_AP"] == 0.0 and "no detections" in summary
    with pytest.raises(ValueError, match="unknown IoU types"):
        coco_eval.evaluate(dataset, [], iou_types=("keypoints",))


def test_model_outputs_become_results_with_pasted_masks():
    """A padded batch of predictions: invalid slots are dropped, 28×28 masks are pasted into the
    valid image size; the full mask of a box gives the box's pixels."""
    outputs = {
        "boxes": np.array([[[2.0, 2, 20, 30], [0, 0, 0, 0]]]),
        "scores": np.array([[0.9, 0.0]]),
        "labels": np.array([[0, 0]]),
        "valid": np.array([[True, False]]),
        "masks": np.ones((1, 2, 28, 28)),
    }
    results = coco_eval.model_results(outputs, [3], np.array([[48, 64]]), CATEGORIES)
    assert len(results) == 1 and results[0]["bbox"] == [2.0, 2.0, 18.0, 28.0]
    decoded = mask_util.decode(
        {**results[0]["segmentation"], "counts": results[0]["segmentation"]["counts"].encode()}
    )
    expected = np.zeros((48, 64), np.uint8)
    expected[2:30, 2:20] = 1
    np.testing.assert_array_equal(decoded, expected)
