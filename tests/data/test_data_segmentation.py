"""Preparation (the tfds builders) → load_split → augmentation for Cityscapes, ADE20K and
PASCAL-Context, on tiny fixtures written here in each dataset's real on-disk format (no downloads,
no TensorFlow)."""

import os
import re

import grain
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from data_fixtures import CITYSCAPES_FILES, H, W, write_ade20k, write_cityscapes, write_voc
from PIL import Image

from dnl_jax.cli.prepare import main as prepare_main
from dnl_jax.data import ade20k, cityscapes, load_split, pascal_context, transforms
from dnl_jax.data.prepare import prepare


def test_cityscapes_prepare_read_and_label_mapping(tmp_path):
    rng = np.random.default_rng(0)
    labels = write_cityscapes(tmp_path / "raw", rng)
    prepare("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    train = load_split("cityscapes", "train", str(tmp_path / "out"), with_names=True)
    assert len(train) == 3
    assert len(load_split("cityscapes", "val", str(tmp_path / "out"))) == 1
    names = [train[i]["name"] for i in range(len(train))]
    assert names == sorted(stem for split, _, stem in CITYSCAPES_FILES if split == "train")
    for i, name in enumerate(names):
        example = train[i]
        assert example["image"].shape == (H, W, 3) and example["image"].dtype == np.uint8
        assert example["label"].shape == (H, W) and example["label"].dtype == np.uint8
        np.testing.assert_array_equal(example["label"][0, :3], [0, 255, 255])
        expected = cityscapes.LABEL_TO_TRAIN[np.minimum(labels[name], 33)]
        expected[labels[name] > 33] = 255
        np.testing.assert_array_equal(example["label"], expected)
    assert set(np.unique(train[0]["label"])) <= set(range(19)) | {255}
    assert train.classes[0] == "road" and len(train.classes) == 19
    assert train.metadata["splits"]["train"]["out_of_range_pixels"] == 3  # the id 40 in each image
    assert train.metadata["splits"]["train"]["out_of_range_images"] == 3
    # What tfds wrote, and nothing else: no downloads/ folder, no incomplete directory.
    assert os.listdir(tmp_path / "out") == ["cityscapes"]
    written = tmp_path / "out" / "cityscapes" / "1.0.0"
    assert {
        "dataset_info.json",
        "features.json",
        "metadata.json",
        "cityscapes-train.array_record-00000-of-00001",
    } <= set(os.listdir(written))
    info = tfds.builder_from_directory(str(written)).info
    assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert info.splits["train"].num_examples == 3


def test_cityscapes_label_id_round_trip():
    train_ids = np.arange(19, dtype=np.uint8)
    np.testing.assert_array_equal(
        cityscapes.LABEL_TO_TRAIN[cityscapes.train_ids_to_label_ids(train_ids)], train_ids
    )
    assert cityscapes.train_ids_to_label_ids(np.array([255], np.uint8))[0] == 0


def test_cityscapes_missing_zip_and_missing_annotation(tmp_path):
    with pytest.raises(ValueError, match="nothing does not exist.*leftImg8bit_trainvaltest.zip"):
        prepare("cityscapes", str(tmp_path / "nothing"), str(tmp_path / "out"))
    write_cityscapes(tmp_path / "half", np.random.default_rng(0))
    os.remove(tmp_path / "half" / cityscapes.LABELS_ZIP)
    expected_at = re.escape(str(tmp_path / "half" / cityscapes.LABELS_ZIP))
    with pytest.raises(
        ValueError, match=f"missing Cityscapes archive .*expected it at {expected_at}"
    ):
        prepare("cityscapes", str(tmp_path / "half"), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    write_cityscapes(tmp_path / "raw", np.random.default_rng(0), skip_label="bochum_000000_000313")
    with pytest.raises(
        ValueError, match="gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png"
    ):
        prepare("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []  # the partial output was removed


def test_corrupt_image_leaves_nothing_and_cli_exit_code(tmp_path, capsys):
    write_cityscapes(tmp_path / "raw", np.random.default_rng(0), corrupt="aachen_000001_000019")
    code = prepare_main(
        ["cityscapes", "--manual_dir", str(tmp_path / "raw"), "--data_dir", str(tmp_path / "out")]
    )
    assert code == 2
    assert "aachen_000001_000019_leftImg8bit.png: corrupt" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(ValueError, match="not prepared.*dnl_jax.cli.prepare cityscapes"):
        load_split("cityscapes", "train", str(tmp_path / "out"))


def test_existing_output_needs_overwrite_and_a_failed_overwrite_keeps_it(tmp_path):
    write_cityscapes(tmp_path / "raw", np.random.default_rng(0))
    args = ("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"))
    prepare(*args, log=lambda _: 0)
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        prepare(*args, log=lambda _: 0)

    def val_image():
        return load_split("cityscapes", "val", str(tmp_path / "out"))[0]["image"]

    before = val_image()
    write_cityscapes(tmp_path / "raw", np.random.default_rng(1), corrupt="aachen_000001_000019")
    with pytest.raises(ValueError, match="corrupt"):
        prepare(*args, overwrite=True, log=lambda _: 0)
    np.testing.assert_array_equal(val_image(), before)  # tfds alone deletes it before building
    write_cityscapes(tmp_path / "raw", np.random.default_rng(1))
    prepare(*args, overwrite=True, log=lambda _: 0)
    assert not np.array_equal(val_image(), before)
    assert sorted(os.listdir(tmp_path / "out")) == ["cityscapes"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_split("cityscapes", "test", str(tmp_path / "out"))


def test_more_shards_than_examples_is_a_clear_error(tmp_path):
    write_cityscapes(tmp_path / "raw", np.random.default_rng(0))  # val has one image
    with pytest.raises(ValueError, match="tfds could not write cityscapes.*number_of_shards"):
        prepare("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"), num_shards=2)
    assert os.listdir(tmp_path / "out") == []


def test_ade20k_reduce_zero_label_grey_images_and_deterministic_preparation(tmp_path):
    labels = write_ade20k(tmp_path / "raw", np.random.default_rng(1))
    # ADE20K has a few greyscale JPEGs: they must come back as [H, W, 3] like the others.
    grey = tmp_path / "raw" / ade20k.ROOT / "images" / "validation" / "ADE_val_00000002.jpg"
    Image.fromarray(np.full((H, W), 77, np.uint8)).save(grey)
    for out in ("out", "again"):
        prepare("ade20k", str(tmp_path / "raw"), str(tmp_path / out), num_shards=2, log=lambda _: 0)
    val = load_split("ade20k", "val", str(tmp_path / "out"), with_names=True)
    assert len(val) == 2 and len(ade20k.CLASSES) == 150
    example = val[1]
    assert example["name"] == "ADE_val_00000002"
    raw = labels[example["name"]].astype(int)
    expected = np.where((raw == 0) | (raw > 150), 255, raw - 1)
    np.testing.assert_array_equal(example["label"], expected)
    np.testing.assert_array_equal(example["label"][0, :3], [255, 0, 255])
    assert example["image"].shape == (H, W, 3)
    np.testing.assert_allclose(example["image"], 77, atol=2)  # JPEG of a flat grey
    again = load_split("ade20k", "val", str(tmp_path / "again"), with_names=True)
    for i in range(len(val)):
        for key in ("name", "image", "label"):
            np.testing.assert_array_equal(val[i][key], again[i][key])


def test_ade20k_missing_annotation_and_empty_split(tmp_path):
    write_ade20k(tmp_path / "raw", np.random.default_rng(1))
    missing = tmp_path / "raw" / ade20k.ROOT / "annotations" / "training" / "ADE_train_00000002.png"
    os.remove(missing)
    with pytest.raises(ValueError, match=str(missing)):
        prepare("ade20k", str(tmp_path / "raw"), str(tmp_path / "out"))
    write_ade20k(tmp_path / "empty", np.random.default_rng(1), counts=(("train", 2), ("val", 0)))
    with pytest.raises(ValueError, match="split 'val' of 'ade20k' has no examples"):
        prepare("ade20k", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []


def test_pascal_context_from_original_mat_files(tmp_path):
    rng = np.random.default_rng(2)
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    write_voc(tmp_path / "raw", rng, ids)
    os.makedirs(tmp_path / "raw" / "trainval")
    for image_id in sum(ids.values(), []):
        label = rng.integers(0, 460, (H, W)).astype(np.uint16)
        label[0, :4] = (2, 458, 1, 500)  # aeroplane, wood, accordion (not in the 59), invalid
        scipy.io.savemat(tmp_path / "raw" / "trainval" / f"{image_id}.mat", {"LabelMap": label})
    prepare("pascal_context", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    train = load_split("pascal_context", "train", str(tmp_path / "out"))
    assert len(train) == 2 and len(pascal_context.CLASSES) == 59
    np.testing.assert_array_equal(train[0]["label"][0, :4], [0, 58, 255, 255])
    assert set(np.unique(train[1]["label"])) <= set(range(59)) | {255}
    assert train.metadata["splits"]["val"]["out_of_range_pixels"] == 1


def test_pascal_context_from_converted_pngs(tmp_path):
    rng = np.random.default_rng(3)
    ids = {"train": ["2008_000002"], "val": ["2008_000007"]}
    write_voc(tmp_path / "raw", rng, ids)
    masks = tmp_path / "raw" / pascal_context.PNG_DIR
    os.makedirs(masks)
    for image_id in sum(ids.values(), []):
        label = rng.integers(0, 60, (H, W)).astype(np.uint8)
        label[0, :3] = (0, 1, 59)
        Image.fromarray(label).save(masks / f"{image_id}.png")
    prepare("pascal_context", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    val = load_split("pascal_context", "val", str(tmp_path / "out"))
    np.testing.assert_array_equal(val[0]["label"][0, :3], [255, 0, 58])


def test_pascal_context_missing_annotations_named(tmp_path):
    write_voc(tmp_path / "raw", np.random.default_rng(0), {"train": ["a"], "val": ["b"]})
    with pytest.raises(ValueError, match="trainval.*SegmentationClassContext"):
        prepare("pascal_context", str(tmp_path / "raw"), str(tmp_path / "out"))


def test_load_split_through_grain_augmentation_is_deterministic(tmp_path):
    write_cityscapes(tmp_path / "raw", np.random.default_rng(0))
    prepare("cityscapes", str(tmp_path / "raw"), str(tmp_path / "out"), log=lambda _: 0)
    source = load_split("cityscapes", "train", str(tmp_path / "out"))
    augment = transforms.SegmentationTrainTransform(crop_size=(8, 8), base_size=(W, H))

    def first_batches(seed, n=2):
        dataset = (
            grain.MapDataset.source(source)
            .shuffle(seed=seed)
            .repeat()
            .random_map(augment, seed=seed)
            .batch(2)
        )
        return [dataset[i] for i in range(n)]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    for batch_a, batch_b in zip(a, b, strict=False):
        np.testing.assert_array_equal(batch_a["image"], batch_b["image"])
        np.testing.assert_array_equal(batch_a["label"], batch_b["label"])
    assert a[0]["image"].shape == (2, 8, 8, 3) and a[0]["image"].dtype == np.float32
    assert a[0]["label"].shape == (2, 8, 8) and a[0]["label"].dtype == np.uint8
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # Resuming: an iterator restored from a saved state yields what the original yields next.
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=0)
        .repeat()
        .random_map(augment, seed=0)
        .batch(2)
        .to_iter_dataset()
    )
    iterator = iter(dataset)
    next(iterator)
    state = iterator.get_state()
    expected = next(iterator)
    resumed = iter(dataset)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])


def test_source_pickles_and_host_shards_partition_the_split(tmp_path):
    import pickle

    write_ade20k(tmp_path / "raw", np.random.default_rng(0))
    prepare("ade20k", str(tmp_path / "raw"), str(tmp_path / "out"), num_shards=2, log=lambda _: 0)
    source = load_split("ade20k", "train", str(tmp_path / "out"), with_names=True)
    first = source[0]
    copy = pickle.loads(pickle.dumps(source))  # what grain's worker processes receive
    np.testing.assert_array_equal(copy[0]["image"], first["image"])
    dataset = grain.MapDataset.source(source)
    hosts = [[example["name"] for example in dataset[p::2]] for p in range(2)]
    assert sorted(hosts[0] + hosts[1]) == sorted(source[i]["name"] for i in range(len(source)))
    assert not set(hosts[0]) & set(hosts[1])
    with pytest.raises(IndexError):
        source[len(source)]
