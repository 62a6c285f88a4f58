"""The detection task through the trainer: jit == pmap on the synthetic detection scenes, the COCO
evaluator (scores, rescaling, results JSON), the mmdet-style step schedule and frozen parameters,
and the config checks of the detection sections."""

import json
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest
from train_testing import enable_compilation_cache

from dnl_jax import tasks
from dnl_jax.evaluators import coco, coco_eval
from dnl_jax.recipes.ablation import synthetic_detection_config
from dnl_jax.train import step as step_lib
from dnl_jax.train.config import base_config, validate_config
from dnl_jax.train.trainer import train_and_evaluate

# The detection fixtures' tiny widths (tests/detection_fixtures.py), a DNL block at c4.
TINY_DETECTOR = {
    "base_channels": 8,
    "stem_channels": 8,
    "fpn_channels": 16,
    "fc_channels": 32,
    "conv_channels": 16,
    "rpn_train": (48, 24),
    "rpn_test": (48, 24),
    "rpn_sampler": (32, 0.5),
    "rcnn_sampler": (16, 0.25),
    "max_detections": 5,
}


def tiny_detection_config(**overrides) -> ml_collections.ConfigDict:
    config = synthetic_detection_config("mask_rcnn_dnl_tiny")
    config.model.kwargs = ml_collections.ConfigDict(TINY_DETECTOR)
    config.update_from_flattened_dict(
        {
            "data.synthetic.num_train": 16,
            "data.synthetic.num_val": 4,
            "batch_size": 4,
            "total_steps": 2,
            "optimizer.decay_steps": (1,),
            "optimizer.warmup_steps": 1,
            "evals.val.batch_size": 4,
            "checkpoint.every_steps": 2,
            "progress_bar": False,
            "curves_figure": False,
            "attention_figure": False,
            **overrides,
        }
    )
    return config


def test_trainer_jit_equals_pmap_with_coco_ap_and_figure(tmp_path):
    """Two steps on 4 fake devices: the same parameters under jit (global batch) and pmap (one
    image per device; sampling keys folded from image ids, loss ratios summed over devices),
    and the same COCO metrics from the evaluator; the results JSON and the detection figure are
    written."""
    enable_compilation_cache()
    jit = train_and_evaluate(tiny_detection_config(attention_figure=True), str(tmp_path / "jit"))
    pmap = train_and_evaluate(tiny_detection_config(parallelism="pmap"), str(tmp_path / "pmap"))
    assert jit["status"] == pmap["status"] == "completed" and jit["step"] == 2
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        jit["state"].params,
        pmap["state"].params,
    )
    for key in ("bbox_AP", "bbox_AP50", "segm_AP"):
        assert 0.0 <= jit["val"][key] <= 1.0
        assert jit["val"][key] == pytest.approx(pmap["val"][key], abs=1e-6), key
    results_file = tmp_path / "jit" / "predictions" / "val_coco_results.json"
    results = json.loads(results_file.read_text())
    assert all(
        {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r) for r in results
    )
    assert {r["image_id"] for r in results} <= {0, 1, 2, 3}
    assert jit["attention"] and os.path.getsize(jit["attention"]) > 0


def test_coco_rows_rescaled_to_the_original_image_score_ap_one():
    """Predictions at the resized scale (×2 in height, ×1.5 in width) equal to the ground truth
    are mapped back by scale_factor and pasted at orig_size: box and mask AP 1.0."""
    orig = (40, 60)
    boxes = np.array([[4, 6, 30, 26], [36, 10, 58, 38]], np.float32)  # x1, y1, x2, y2
    masks = np.zeros((2, *orig), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.astype(int), strict=False):
        mask[y1:y2, x1:x2] = 1
    dataset = coco_eval.ground_truth_dataset(
        [
            {
                "id": 7,
                "height": orig[0],
                "width": orig[1],
                "boxes": boxes,
                "labels": np.array([0, 1]),
                "masks": masks,
            }
        ],
        [3, 9],
    )
    scale = np.array([2.0, 1.5], np.float32)
    slots = 4
    rows = {
        "boxes": np.zeros((2, slots, 4), np.float32),
        "scores": np.zeros((2, slots), np.float32),
        "labels": np.zeros((2, slots), np.int32),
        "valid": np.zeros((2, slots), bool),
        "masks": np.ones((2, slots, 28, 28), np.float32),
        "image_id": np.array([7, -1], np.int32),
        "scale_factor": np.stack([scale, scale]),
        "orig_size": np.array([orig, orig], np.int32),
    }
    rows["boxes"][0, :2] = boxes * np.array([1.5, 2.0, 1.5, 2.0], np.float32)
    rows["scores"][0, :2] = (0.9, 0.8)
    rows["labels"][0, :2] = (0, 1)
    rows["valid"][0, :2] = True
    results = coco.rows_to_results(rows, [3, 9])
    assert len(results) == 2 and {r["category_id"] for r in results} == {3, 9}
    metrics, _ = coco_eval.evaluate(dataset, results)
    assert metrics["bbox_AP"] == pytest.approx(1.0)
    assert metrics["segm_AP"] == pytest.approx(1.0)


def test_step_schedule_is_multistep_times_linear_warmup():
    opt = ml_collections.ConfigDict(
        dict(
            schedule="step",
            lr=0.02,
            decay_steps=(8, 11),
            decay_factor=0.1,
            warmup_steps=4,
            warmup_ratio=1 / 3,
            poly_power=0.9,
            min_lr=0.0,
        )
    )
    schedule = step_lib.learning_rate_schedule(opt, 12)
    expected = {
        0: 0.02 / 3,
        2: 0.02 * (1 / 3 + 2 / 3 * 2 / 4),
        4: 0.02,
        7: 0.02,
        8: 0.002,
        10: 0.002,
        11: 0.0002,
    }
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step


def test_frozen_parameters_get_no_update_and_unknown_prefixes_are_refused():
    params = {
        "backbone": {
            "conv1": {"kernel": np.ones(3, np.float32)},
            "layer2_0": {"kernel": np.ones(3, np.float32)},
        },
        "head": {"kernel": np.ones(2, np.float32)},
    }
    opt = ml_collections.ConfigDict(
        dict(
            schedule="poly",
            lr=0.1,
            poly_power=0.9,
            min_lr=0.0,
            warmup_steps=0,
            warmup_ratio=0.1,
            momentum=0.9,
            weight_decay=1e-2,
            grad_clip_norm=1.0,
            weight_decay_multipliers=(),
            frozen=("backbone/conv1",),
        )
    )
    optimizer = step_lib.make_optimizer(opt, 10)
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["backbone"]["conv1"]["kernel"], 1.0)
    assert np.all(new["backbone"]["layer2_0"]["kernel"] < 1.0)
    assert np.all(new["head"]["kernel"] < 1.0)
    opt.frozen = ("backbone/stem",)
    optimizer = step_lib.make_optimizer(opt, 10)
    with pytest.raises(ValueError, match="backbone/stem.*match no parameter"):
        optimizer.init(params)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.num_classes": 5}, "even number"),
        ({"data.synthetic.image_size": 48}, "multiple of 32"),
        ({"optimizer.schedule": "poly"}, "decay_steps is read by schedule='step' only"),
        ({"optimizer.decay_steps": (300,)}, "increasing integers"),
        ({"evals.val.iou_types": ("keypoints",)}, "iou_types"),
    ],
)
def test_detection_config_errors_name_the_key(overrides, message):
    config = synthetic_detection_config()
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)


def test_evaluator_types_are_checked_against_the_task():
    config = synthetic_detection_config()
    config.evals.val = ml_collections.ConfigDict(dict(type="batched", every_steps=10, batch_size=8))
    with pytest.raises(ValueError, match="type='coco'"):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    segmentation = synthetic_detection_config()
    segmentation.data.name = "synthetic"
    segmentation.data.num_classes = 7
    with pytest.raises(ValueError, match="type='coco' does not apply to the segmentation dataset"):
        validate_config(
            segmentation, tasks.for_dataset(segmentation.data.name), num_devices=1, num_processes=1
        )


def test_coco_fixture_prepares_trains_one_step_and_evaluates(tmp_path):
    """The tiny COCO fixture in the real layout (tests/coco_fixtures.py): prepared with the tfds
    builder, one training step through the trainer on all 4 training images (mmdet's train
    pipeline with box-level mask crops; crowd regions and the degenerate box left out of the
    targets, the image without annotations a negative; bf16 compute), COCO AP of the val split by
    pycocotools against the original annotations, and the results JSON in the original category
    ids."""
    from coco_fixtures import CATEGORY_IDS, IMAGES, write_coco

    from dnl_jax.data.prepare import prepare

    write_coco(str(tmp_path / "raw"), np.random.default_rng(0))
    prepare("coco", str(tmp_path / "raw"), str(tmp_path / "data"), log=lambda *a: None)
    enable_compilation_cache()
    config = tiny_detection_config(
        **{
            "data.name": "coco",
            "data.data_dir": str(tmp_path / "data"),
            "data.num_classes": 3,
            "data.detection.base_size": (64, 48),
            "data.detection.canvas": (64, 64),
            "data.detection.max_instances": 4,
            "data.detection.filter_empty_gt": False,  # the image without annotations: a negative
            "data.detection.mask_crop_size": 16,  # box-level crops (gt_mask_crops), not full masks
            "model.dtype": "bfloat16",  # bf16 compute, float32 parameters and losses
            "model.name": "mask_rcnn_fcn_tiny",
            "model.from_scratch": True,
            "batch_size": 4,
            "total_steps": 1,
            "optimizer.decay_steps": (),
            "optimizer.warmup_steps": 0,
            "evals.val.batch_size": 2,
        }
    )
    config.data.synthetic = base_config().data.synthetic  # a COCO run reads no synthetic key
    result = train_and_evaluate(config, str(tmp_path / "run"))
    assert result["status"] == "completed" and result["step"] == 1
    assert 0.0 <= result["val"]["bbox_AP"] <= 1.0 and 0.0 <= result["val"]["segm_AP"] <= 1.0
    results = json.loads((tmp_path / "run" / "predictions" / "val_coco_results.json").read_text())
    val_ids = {image_id for image_id, _, _ in IMAGES["val"]}
    assert {r["image_id"] for r in results} <= val_ids
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
