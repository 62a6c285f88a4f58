"""Whole / sliding-window / multi-scale+flip inference, metrics, prediction PNGs, video accuracy."""

import numpy as np
import pytest
from PIL import Image

from dnl_jax.data import datasets
from dnl_jax.evaluators import segmentation, video
from dnl_jax.evaluators import segmentation_inference as inference
from dnl_jax.models.metrics import metrics_from_confusion

K = 4
WEIGHTS = np.random.default_rng(0).standard_normal((3, K)).astype(np.float32)


def per_pixel_predict(images):
    """Logits that depend on each pixel only: slide and whole inference must agree exactly."""
    return np.asarray(images, np.float32) @ WEIGHTS


def mean_predict(images):
    """Every pixel gets the window's mean colour mapped to logits: a non-local model."""
    means = np.asarray(images, np.float32).mean(axis=(1, 2), keepdims=True)
    return np.broadcast_to(means @ WEIGHTS, images.shape[:3] + (K,))


def test_cityscapes_window_grid_matches_mmseg():
    boxes = inference.sliding_windows(1024, 2048, (512, 1024), (341, 683))
    assert len(boxes) == 9  # 3 x 3, as mmseg's slide_inference computes
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes} == {(512, 1024)}
    assert boxes[-1] == (512, 1024, 1024, 2048)  # the last window ends at the border
    assert inference.sliding_windows(5, 7, (8, 8), (4, 4)) == [(0, 5, 0, 7)]


@pytest.mark.parametrize(
    "size,crop,stride",
    [((13, 21), (6, 8), (4, 5)), ((5, 6), (8, 8), (4, 4)), ((12, 12), (6, 6), (6, 6))],
)
def test_slide_equals_whole_for_a_per_pixel_model(size, crop, stride):
    images = np.random.default_rng(1).standard_normal((2, *size, 3)).astype(np.float32)
    whole = inference.whole_inference(per_pixel_predict, images)
    slide = inference.slide_inference(
        per_pixel_predict, images, crop_size=crop, stride=stride, window_batch=3
    )
    np.testing.assert_allclose(slide, whole, rtol=1e-5, atol=1e-5)


def test_slide_averages_overlapping_windows():
    images = np.random.default_rng(2).standard_normal((1, 6, 10, 3)).astype(np.float32)
    boxes = inference.sliding_windows(6, 10, (6, 6), (6, 4))  # x windows [0,6) and [4,10)
    assert boxes == [(0, 6, 0, 6), (0, 6, 4, 10)]
    left = mean_predict(images[:, :, 0:6])[0, 0, 0]
    right = mean_predict(images[:, :, 4:10])[0, 0, 0]
    logits = inference.slide_inference(mean_predict, images, crop_size=(6, 6), stride=(6, 4))
    np.testing.assert_allclose(logits[0, 3, 1], left, rtol=1e-5)
    np.testing.assert_allclose(logits[0, 3, 5], (left + right) / 2, rtol=1e-5)
    np.testing.assert_allclose(logits[0, 3, 8], right, rtol=1e-5)


def test_low_resolution_logits_are_resized():
    images = np.zeros((1, 8, 8, 3), np.float32)
    logits = inference.whole_inference(lambda x: np.ones((1, 2, 2, K)), images)
    assert logits.shape == (1, 8, 8, K)


def test_flip_and_scales_average_probabilities():
    images = np.random.default_rng(3).standard_normal((1, 8, 12, 3)).astype(np.float32)
    whole = inference.whole_inference(per_pixel_predict, images)
    # A per-pixel model is flip-equivariant: flip averaging changes nothing but the softmax.
    flipped = inference.predict_scores(per_pixel_predict, images, flip=True)
    softmax = np.exp(whole) / np.exp(whole).sum(-1, keepdims=True)
    np.testing.assert_allclose(flipped, softmax, rtol=1e-5, atol=1e-6)
    # Scales: a model returning fixed logits gives their softmax at any scale.
    constant = np.arange(K, dtype=np.float32)
    scores = inference.predict_scores(
        lambda x: np.broadcast_to(constant, x.shape[:3] + (K,)),
        images,
        scales=(0.5, 1.0, 1.75),
        flip=True,
        mode="slide",
        crop_size=(4, 4),
        stride=(3, 3),
        output_size=(5, 7),
    )
    assert scores.shape == (1, 5, 7, K)
    np.testing.assert_allclose(
        scores[0, 2, 3], np.exp(constant) / np.exp(constant).sum(), rtol=1e-5
    )


def test_bad_inference_settings():
    images = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="eval mode 'tiles'"):
        inference.predict_scores(per_pixel_predict, images, mode="tiles")
    with pytest.raises(ValueError, match="needs eval.crop_size and eval.stride"):
        inference.predict_scores(per_pixel_predict, images, mode="slide")


def test_confusion_and_metrics_by_hand():
    label = np.array([[0, 0, 1, 1], [2, 255, 255, 1]])
    prediction = np.array([[0, 1, 1, 1], [0, 3, 3, 1]])
    confusion = segmentation.confusion_matrix(prediction, label, K)
    expected = np.zeros((K, K), int)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 0] = 1, 1, 3, 1
    np.testing.assert_array_equal(confusion, expected)
    metrics = metrics_from_confusion(confusion)
    # IoU: class 0 = 1/(2+2-1), class 1 = 3/(3+4-3), class 2 = 0/1, class 3 absent → NaN.
    np.testing.assert_allclose(metrics["per_class_iou"][:3], [1 / 3, 3 / 4, 0.0])
    assert np.isnan(metrics["per_class_iou"][3])
    assert metrics["miou"] == pytest.approx((1 / 3 + 3 / 4) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 6)
    table = segmentation.format_iou_table(metrics, ["road", "car", "sky", "bus"])
    assert "car" in table and "75.00" in table and "mIoU" in table
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        segmentation.confusion_matrix(prediction, label + 3, K)


def _colour_coded(rng, label):
    """An image whose red channel is 10 x the class, so `_oracle` can read the label back."""
    image = rng.integers(0, 256, label.shape + (3,), dtype=np.uint8)
    image[..., 0] = np.where(label == 255, 0, label * 10)
    return image


def _oracle(images):
    red = np.asarray(images)[..., :1]
    return -((red - 10.0 * np.arange(K)) ** 2)


def test_evaluate_segmentation_perfect_model_and_cityscapes_pngs(tmp_path):
    rng = np.random.default_rng(4)
    examples = []
    for i in range(3):
        label = rng.integers(0, K, (6, 8)).astype(np.uint8)
        label[0, 0] = 255
        examples.append(
            {"image": _colour_coded(rng, label), "label": label, "name": f"berlin_00000{i}_000019"}
        )
    for mode in ("whole", "slide"):
        confusion = segmentation.evaluate_segmentation(
            _oracle,
            examples,
            num_classes=K,
            mean=(0, 0, 0),
            std=(1, 1, 1),
            mode=mode,
            crop_size=(4, 4),
            stride=(2, 3),
            output_dir=str(tmp_path),
            write_prediction=datasets.get("cityscapes").write_prediction,
        )
        assert confusion.sum() == 3 * (6 * 8 - 1)
        assert metrics_from_confusion(confusion)["miou"] == 1.0
    written = np.asarray(Image.open(tmp_path / "berlin_000001_000019_leftImg8bit.png"))
    # Train ids 0..3 are Cityscapes label ids 7, 8, 11, 12.
    np.testing.assert_array_equal(written[1:], np.array([7, 8, 11, 12])[examples[1]["label"][1:]])


def test_evaluate_video_views():
    rng = np.random.default_rng(5)
    examples = [
        {"video": rng.integers(0, 256, (8, 10, 12, 3), dtype=np.uint8), "label": k} for k in (0, 1)
    ]
    always_zero = lambda videos: np.tile([[5.0, 0.0]], (len(videos), 1))  # noqa: E731
    result = video.evaluate_video(
        always_zero, examples, clip_len=4, stride=1, crop_size=8, num_clips=2, num_crops=3
    )
    assert result == {"clip_accuracy": 0.5, "video_accuracy": 0.5}
