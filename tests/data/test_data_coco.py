"""COCO 2017: the tfds builder on a tiny fixture in the real layout (coco_fixtures.py) →
load_split → mmdet's train / eval pipelines → COCOeval ground truth, checked against
pycocotools' own decoding of the fixture's JSON."""

import contextlib
import copy
import io
import json
import os
import pickle
import re

import grain
import numpy as np
import pytest
from coco_fixtures import (
    ALL_MALFORMED_ID,
    CATEGORIES,
    CATEGORY_IDS,
    MALFORMED_PART_ID,
    file_name,
    write_coco,
)
from PIL import Image
from pycocotools.coco import COCO

from dnl_jax.cli.prepare import main as prepare_main
from dnl_jax.data import coco, load_split, transforms
from dnl_jax.data import detection_transforms as dt
from dnl_jax.data.prepare import prepare
from dnl_jax.data.sources import Subset
from dnl_jax.evaluators import coco_eval

SCALE, CANVAS = (64, 48), (64, 64)  # 40x56 → 46x64, 56x40 → 64x46, 24x30 → 38x48


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(raw dir, data dir, {split: pycocotools COCO of the JSON}, what the CLI printed)."""
    root = tmp_path_factory.mktemp("coco")
    paths = write_coco(str(root / "raw"), np.random.default_rng(0))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = prepare_main(
            ["coco", "--manual_dir", str(root / "raw"), "--data_dir", str(root / "out")]
        )
    assert code == 0
    with contextlib.redirect_stdout(io.StringIO()):
        apis = {split: COCO(path) for split, path in paths.items()}
    return str(root / "raw"), str(root / "out"), apis, printed.getvalue()


def _annotations(api, image_id):
    """The JSON's annotations of the image that preparation keeps, malformed parts removed."""
    kept = []
    for ann in api.loadAnns(api.getAnnIds(imgIds=[image_id])):
        if ann["id"] == ALL_MALFORMED_ID:
            continue
        ann = copy.deepcopy(ann)
        if isinstance(ann["segmentation"], list):
            ann["segmentation"] = [p for p in ann["segmentation"] if len(p) >= 6]
        kept.append(ann)
    return kept


def test_prepare_and_read_back_match_pycocotools(prepared):
    raw, out, apis, printed = prepared
    for split in ("train", "val"):
        source = load_split("coco", split, out, with_names=True)
        api = apis[split]
        assert len(source) == len(api.getImgIds())
        assert coco.category_ids(source) == CATEGORY_IDS
        assert source.classes == [c["name"] for c in sorted(CATEGORIES, key=lambda c: c["id"])]
        image_ids = [int(source[i]["image_id"]) for i in range(len(source))]
        assert image_ids == sorted(api.getImgIds())
        for index, image_id in enumerate(image_ids):
            example = source[index]
            info = api.loadImgs([image_id])[0]
            assert example["name"] == file_name(image_id)[:-4]
            assert (example["height"], example["width"]) == (info["height"], info["width"])
            with Image.open(os.path.join(raw, f"{split}2017", info["file_name"])) as image:
                np.testing.assert_array_equal(example["image"], np.asarray(image.convert("RGB")))
            anns = _annotations(api, image_id)
            n = len(anns)
            assert example["boxes"].shape == (n, 4) and example["boxes"].dtype == np.float32
            assert example["masks"].shape == (n, info["height"], info["width"])
            assert example["masks"].dtype == np.uint8
            for i, ann in enumerate(anns):
                x, y, w, h = ann["bbox"]
                np.testing.assert_allclose(example["boxes"][i], [x, y, x + w, y + h], rtol=1e-6)
                assert example["category_ids"][i] == ann["category_id"]
                assert CATEGORY_IDS[example["labels"][i]] == ann["category_id"]
                assert example["iscrowd"][i] == bool(ann["iscrowd"])
                np.testing.assert_array_equal(example["masks"][i], api.annToMask(ann))
    train = load_split("coco", "train", out)
    assert train.metadata["coco2017_categories"] is False  # the fixture's are 1, 3 and 90
    assert sorted(np.unique(np.concatenate([train[i]["labels"] for i in range(len(train))]))) == [
        0,
        1,
        2,
    ]
    stats = train.metadata["splits"]["train"]
    assert stats["malformed_polygons"] == 2
    assert sorted(stats["malformed_polygon_annotation_ids"]) == [
        MALFORMED_PART_ID,
        ALL_MALFORMED_ID,
    ]
    assert stats["skipped_annotation_ids"] == [ALL_MALFORMED_ID] and stats["num_crowd"] == 1
    assert stats["indices_without_annotations"] == [2]  # image 25, third by id
    assert "2 malformed polygons" in printed and str(ALL_MALFORMED_ID) in printed


def test_coco2017_category_ids_are_1_to_90_less_the_ten_unused():
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert list(coco.COCO_CATEGORY_IDS) == [i for i in range(1, 91) if i not in unused]
    assert len(coco.COCO_CATEGORY_IDS) == 80


def test_train_indices_follow_mmdet_filters(prepared):
    train = load_split("coco", "train", prepared[1])
    np.testing.assert_array_equal(coco.train_indices(train), [0, 1])  # 25: empty, 30: 24x30
    np.testing.assert_array_equal(coco.train_indices(train, filter_empty_gt=False), [0, 1, 2])
    np.testing.assert_array_equal(
        coco.train_indices(train, filter_empty_gt=False, min_size=0), [0, 1, 2, 3]
    )
    with pytest.raises(ValueError, match="min_size=16"):
        coco.train_indices(train, min_size=16)


def _mask_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("flip", [False, True])
def test_train_transform_scales_and_flips_boxes_with_masks(prepared, flip):
    train = load_split("coco", "train", prepared[1])
    counter = dt.InstanceCounter()
    for index in range(len(train)):
        example = train[index]
        out = dt.detection_train_augment(
            example,
            np.random.default_rng(0),
            scale=SCALE,
            canvas=CANVAS,
            max_instances=2,
            flip_prob=float(flip),
            counter=counter,
        )
        assert out["image"].shape == (*CANVAS, 3) and out["image"].dtype == np.float32
        assert out["gt_masks"].shape == (2, *CANVAS) and out["gt_masks"].dtype == np.uint8
        assert out["gt_boxes"].dtype == np.float32 and out["gt_labels"].dtype == np.int32
        assert out["gt_valid"].dtype == bool and out["image_id"] == example["image_id"]
        height, width = example["image"].shape[:2]
        new_h, new_w = transforms.rescale_size(height, width, SCALE)
        np.testing.assert_array_equal(out["image_size"], [new_h, new_w])
        resized = transforms.resize(example["image"], None, (new_h, new_w))[0]
        expected_image = transforms.normalize(resized[:, ::-1] if flip else resized)
        np.testing.assert_allclose(out["image"][:new_h, :new_w], expected_image, atol=1e-6)
        assert not out["image"][new_h:].any() and not out["image"][:, new_w:].any()
        # The instances trained on: not crowd, not degenerate, the first two.
        kept = [
            i
            for i in range(len(example["labels"]))
            if not example["iscrowd"][i]
            and (example["boxes"][i, 2:] - example["boxes"][i, :2] >= 1).all()
        ][:2]
        assert out["gt_valid"].sum() == len(kept)
        scale = np.array([new_w / width, new_h / height] * 2)
        for slot, i in enumerate(kept):
            box = example["boxes"][i] * scale
            if flip:
                box = np.array([new_w - box[2], box[1], new_w - box[0], box[3]])
            np.testing.assert_allclose(out["gt_boxes"][slot], box, atol=1e-4)
            assert out["gt_labels"][slot] == example["labels"][i]
            mask = out["gt_masks"][slot]
            assert not mask[new_h:].any() and not mask[:, new_w:].any()
            # The mask moved with its box: its tight box is the transformed tight box of the
            # original mask, within a pixel.
            original = _mask_box(example["masks"][i]) * scale
            if flip:
                original = np.array(
                    [new_w - original[2], original[1], new_w - original[0], original[3]]
                )
            np.testing.assert_allclose(_mask_box(mask), original, atol=1.0)
        assert not out["gt_boxes"][len(kept) :].any() and not out["gt_masks"][len(kept) :].any()
    # Over the 4 images: crowd 104 out; 106 degenerate; one of 3 valid in images 3 and 9 beyond 2.
    assert counter.totals() == {"images": 4, "kept": 5, "crowd": 1, "degenerate": 1, "truncated": 2}


def test_mask_crops_are_the_full_masks_resampled_inside_their_boxes(prepared):
    """mask_crop_size=S: the same example and random draw give `gt_mask_crops` [G, S, S] equal
    to `box_mask_crops` of the full-canvas masks in their boxes, and no `gt_masks`."""
    train = load_split("coco", "train", prepared[1])
    for index in range(len(train)):
        common = dict(scale=SCALE, canvas=CANVAS, max_instances=3, flip_prob=0.5)
        full = dt.detection_train_augment(train[index], np.random.default_rng(3), **common)
        cropped = dt.detection_train_augment(
            train[index], np.random.default_rng(3), mask_crop_size=16, **common
        )
        assert "gt_masks" not in cropped and cropped["gt_mask_crops"].shape == (3, 16, 16)
        np.testing.assert_array_equal(cropped["gt_boxes"], full["gt_boxes"])
        valid = full["gt_valid"]
        np.testing.assert_array_equal(
            cropped["gt_mask_crops"][valid],
            dt.box_mask_crops(full["gt_masks"][valid], full["gt_boxes"][valid], 16),
        )
        assert not cropped["gt_mask_crops"][~valid].any()
        assert all(crop.any() for crop in cropped["gt_mask_crops"][valid])


def test_degenerate_after_resize_and_grain_batches(prepared):
    train = load_split("coco", "train", prepared[1])
    example = train[3]  # 24x30, one 17x12 box
    tiny = dt.detection_train_augment(
        example,
        np.random.default_rng(0),
        scale=(2, 1),
        canvas=(32, 32),
        counter=(counter := dt.InstanceCounter()),
    )
    assert not tiny["gt_valid"].any() and counter.totals()["degenerate"] == 1
    with pytest.raises(ValueError, match=r"resized to \(100, 125\) is larger than the canvas"):
        dt.detection_train_augment(
            example, np.random.default_rng(0), scale=(200, 100), canvas=(32, 32)
        )
    augment = dt.DetectionTrainTransform(scale=SCALE, canvas=CANVAS, max_instances=3)
    subset = Subset(train, coco.train_indices(train))
    assert len(subset) == 2 and subset.metadata is train.metadata
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(subset))[1]["masks"], train[1]["masks"]
    )  # as grain's worker processes get it
    dataset = grain.MapDataset.source(subset).random_map(augment, seed=0).batch(2)
    batch = dataset[0]
    assert batch["image"].shape == (2, *CANVAS, 3) and batch["gt_masks"].shape == (2, 3, *CANVAS)
    np.testing.assert_array_equal(batch["image_id"], [3, 9])
    np.testing.assert_array_equal(dataset[0]["gt_boxes"], batch["gt_boxes"])  # deterministic


def test_eval_preprocess_ground_truth_and_perfect_predictions(prepared):
    _, out, apis, _ = prepared
    val = load_split("coco", "val", out)
    dataset, category_ids = coco.coco_ground_truth(val)
    assert category_ids == CATEGORY_IDS
    assert [c["id"] for c in dataset["categories"]] == CATEGORY_IDS
    json.dumps(dataset)  # what COCOeval loads must be plain JSON
    api = apis["val"]
    assert sorted(a["id"] for a in dataset["annotations"]) == sorted(api.getAnnIds())
    truth = COCO()
    truth.dataset = dataset
    truth.createIndex()
    for ann in dataset["annotations"]:
        original = api.loadAnns([ann["id"]])[0]
        np.testing.assert_allclose(ann["bbox"], original["bbox"], atol=1e-9)
        for key in ("category_id", "iscrowd", "image_id", "area"):
            assert ann[key] == original[key]
        np.testing.assert_array_equal(truth.annToMask(ann), api.annToMask(original))
    results, batch = [], []
    for index in range(len(val)):
        example = val[index]
        pre = dt.detection_eval_preprocess(example, scale=SCALE, canvas=CANVAS)
        assert set(pre) == {"image", "image_size", "scale_factor", "orig_size", "image_id"}
        assert pre["image"].shape == (*CANVAS, 3) and pre["image"].dtype == np.float32
        np.testing.assert_array_equal(pre["orig_size"], example["image"].shape[:2])
        np.testing.assert_allclose(
            pre["scale_factor"], pre["image_size"] / example["image"].shape[:2]
        )
        assert pre["image_id"] == example["image_id"]
        real = ~example["iscrowd"]
        results += coco_eval.detection_results(
            example["image_id"],
            example["boxes"][real],
            np.ones(real.sum()),
            example["labels"][real],
            category_ids,
            example["masks"][real],
        )
        batch.append((example, pre, real))
    metrics, _ = coco_eval.evaluate(dataset, results)
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    # The evaluation path: boxes predicted in resized pixels, back to the original ones.
    size = max(int(real.sum()) for _, _, real in batch)
    outputs = {
        "boxes": np.zeros((len(batch), size, 4)),
        "scores": np.zeros((len(batch), size)),
        "labels": np.zeros((len(batch), size), int),
        "valid": np.zeros((len(batch), size), bool),
    }
    for b, (example, pre, real) in enumerate(batch):
        n = int(real.sum())
        outputs["boxes"][b, :n] = example["boxes"][real] * np.tile(pre["scale_factor"][::-1], 2)
        outputs["scores"][b, :n], outputs["valid"][b, :n] = 0.9, True
        outputs["labels"][b, :n] = example["labels"][real]
    scale_factors = np.stack([pre["scale_factor"] for _, pre, _ in batch])
    image_ids = [int(pre["image_id"]) for _, pre, _ in batch]
    orig_sizes = np.stack([pre["orig_size"] for _, pre, _ in batch])
    original = dt.outputs_to_original(outputs, scale_factors)
    rescaled, _ = coco_eval.evaluate(
        dataset,
        coco_eval.model_results(original, image_ids, orig_sizes, category_ids),
        iou_types=("bbox",),
    )
    assert rescaled["bbox_AP"] == pytest.approx(1.0)
    unscaled, _ = coco_eval.evaluate(
        dataset,
        coco_eval.model_results(outputs, image_ids, orig_sizes, category_ids),
        iou_types=("bbox",),
    )
    assert unscaled["bbox_AP"] < 0.5
    wrong, _ = coco_eval.evaluate(
        dataset,
        coco_eval.model_results(original, image_ids, orig_sizes, category_ids[::-1]),
        iou_types=("bbox",),
    )
    assert wrong["bbox_AP"] < 1.0  # the label → category mapping matters


def test_missing_annotation_file_and_missing_image_are_named(tmp_path):
    paths = write_coco(str(tmp_path / "raw"), np.random.default_rng(0))
    os.remove(paths["val"])
    expected = re.escape(paths["val"])
    with pytest.raises(ValueError, match=f"missing COCO annotation file.*{expected}"):
        prepare("coco", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    write_coco(str(tmp_path / "raw"), np.random.default_rng(0))
    missing = tmp_path / "raw" / "train2017" / file_name(25)
    os.remove(missing)
    with pytest.raises(ValueError, match=f"expected it at {re.escape(str(missing))}"):
        prepare("coco", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    assert os.listdir(tmp_path / "out") == []
