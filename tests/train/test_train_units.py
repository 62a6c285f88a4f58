"""Unit tests of the training system's parts: metrics, config validation, the synthetic data,
the grain pipeline (per-host sharding, resumable position) and the optimizer schedule."""

import importlib.util
import os

import numpy as np
import optax
import pytest

from dnl_jax.data import pipeline, synthetic, transforms
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.tasks import get_model
from dnl_jax.train import step as step_lib
from dnl_jax.train.checkpoint import Checkpointer
from dnl_jax import IGNORE_LABEL
from dnl_jax.models.metrics import metrics_from_confusion as segmentation_metrics
from dnl_jax.tasks import for_dataset
from dnl_jax.train.config import (base_config, multi_view_eval, segmentation_eval,
                                  validate_config)


# --------------------------------------------------------------------------------- metrics
def _reference_metrics(truth, pred, num_classes):
    """Per-class IoU / pixel accuracy straight from label maps (no confusion matrix)."""
    ious = []
    for k in range(num_classes):
        inter = np.sum((truth == k) & (pred == k))
        union = np.sum((truth == k) | (pred == k))
        ious.append(inter / union if union else np.nan)
    return np.array(ious), np.mean(truth == pred)


def test_segmentation_metrics_match_numpy_from_label_maps():
    rng = np.random.default_rng(0)
    num_classes = 6
    truth = rng.integers(0, num_classes - 1, size=5000)  # class 5 never true ...
    pred = np.where(rng.random(5000) < 0.6, truth, rng.integers(0, num_classes - 1, size=5000))
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (truth, pred), 1)
    metrics = segmentation_metrics(confusion)
    iou, pixel_accuracy = _reference_metrics(truth, pred, num_classes)
    np.testing.assert_allclose(metrics["per_class_iou"], iou, rtol=1e-12)
    assert np.isnan(metrics["per_class_iou"][5])  # ... nor predicted: excluded from the mean
    np.testing.assert_allclose(metrics["miou"], np.nanmean(iou), rtol=1e-12)
    np.testing.assert_allclose(metrics["pixel_accuracy"], pixel_accuracy, rtol=1e-12)


def test_segmentation_metrics_perfect_and_bad_shape():
    metrics = segmentation_metrics(np.diag([3, 4, 5]))
    assert metrics["miou"] == 1.0 and metrics["pixel_accuracy"] == 1.0
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------- config
def _valid(config, devices=4):
    validate_config(config, num_devices=devices, num_processes=1)


def test_config_unknown_key_suggests_close_name():
    config = base_config()
    config.optimiser = base_config().optimizer
    with pytest.raises(ValueError, match=r"unknown config key 'optimiser.*Did you mean.*optimizer"):
        _valid(config)


@pytest.mark.parametrize("key, value, message", [
    ("parallelism", "pjit", "choose one of"),
    ("batch_size", 18, "divisible by the 4 devices"),
    ("grad_accum_steps", 3, "not divisible by config.grad_accum_steps"),
    ("total_steps", 0, "total_steps=0 must be >= 1"),
])
def test_config_impossible_values(key, value, message):
    config = base_config()
    config[key] = value
    with pytest.raises(ValueError, match=message):
        _valid(config)


def test_config_nested_impossible_values():
    config = base_config()
    config.optimizer.warmup_steps = config.total_steps
    with pytest.raises(ValueError, match="warmup_steps"):
        _valid(config)
    config = base_config()
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match="model.dtype"):
        _valid(config)
    config = base_config()
    for bad in (3, 4):
        config.data.num_classes = bad
        with pytest.raises(ValueError, match=f"num_classes={bad}: the synthetic scenes need an odd"):
            _valid(config)
    _valid(base_config())  # and the defaults pass


# -------------------------------------------------------------------------------- the data
def test_synthetic_is_deterministic_and_splits_differ():
    source = SyntheticSegmentation(8, image_size=32, num_classes=5, seed=3)
    a, b = source[5], SyntheticSegmentation(8, image_size=32, num_classes=5, seed=3)[5]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    other = SyntheticSegmentation(8, image_size=32, num_classes=5, seed=3, split="val")[5]
    assert not np.array_equal(a["image"], other["image"])
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.float32
    assert a["label"].shape == (32, 32) and a["label"].dtype == np.int32
    labels = np.concatenate([source[i]["label"].ravel() for i in range(8)])
    assert set(np.unique(labels)) <= set(range(5)) and len(np.unique(labels)) >= 3
    with pytest.raises(ValueError, match="split"):
        SyntheticSegmentation(4, split="test")
    for bad in (3, 6):
        with pytest.raises(ValueError, match="odd num_classes >= 5"):
            SyntheticSegmentation(4, num_classes=bad)


@pytest.mark.parametrize("index", range(8))
def test_synthetic_object_classes_follow_the_distant_beacon(index):
    """Same layout, beacon flipped dark → light: every object pixel moves from class 3 + 2a to
    3 + 2a + 1, the beacon from class 1 to 2, the background (0) stays, and only the beacon square
    changes grey, one pixel or more away from every object."""
    size, colours = 64, synthetic.palette(2)
    dark, light = (synthetic.draw_scene(np.random.default_rng([7, index]), size, colours,
                                        noise=0.0, cue=cue) for cue in (0, 1))
    objects, beacon = dark["label"] >= 3, dark["label"] == 1
    assert objects.any()
    np.testing.assert_array_equal(dark["label"][objects] % 2, 1)  # 3 + 2a: odd
    np.testing.assert_array_equal(light["label"], np.where(objects | beacon, dark["label"] + 1, 0))
    changed = np.argwhere(np.any(dark["image"] != light["image"], axis=-1))
    np.testing.assert_array_equal(changed, np.argwhere(beacon))  # exactly the beacon square
    side = size // 4
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert (y1 - y0 + 1, x1 - x0 + 1) == (side, side) and len(changed) == side * side
    assert not objects[max(0, y0 - 1):y1 + 2, max(0, x0 - 1):x1 + 2].any()  # clear of objects
    grey = lambda scene: scene["image"][y0:y1 + 1, x0:x1 + 1] * 0.25 + 0.5  # noqa: E731
    np.testing.assert_allclose(grey(dark), synthetic.CUE_GREYS[0], atol=1e-6)
    np.testing.assert_allclose(grey(light), synthetic.CUE_GREYS[1], atol=1e-6)


def test_pipeline_two_hosts_together_see_the_one_host_batches():
    source = SyntheticSegmentation(20, image_size=16, num_classes=5)
    one = iter(pipeline.train_dataset(source, seed=1, local_batch=4, process_index=0,
                                      process_count=1))
    hosts = [iter(pipeline.train_dataset(source, seed=1, local_batch=2, process_index=p,
                                         process_count=2)) for p in range(2)]
    for _ in range(7):  # crosses an epoch boundary (20 examples)
        expected = next(one)["image"]
        joined = np.concatenate([next(h)["image"] for h in hosts])
        np.testing.assert_array_equal(joined, expected)


def test_pipeline_resumes_from_its_state():
    source = SyntheticSegmentation(12, image_size=16, num_classes=5)
    make = lambda: iter(pipeline.train_dataset(source, seed=0, local_batch=4,  # noqa: E731
                                               process_index=0, process_count=1))
    first = make()
    for _ in range(4):
        next(first)
    state = first.get_state()
    expected = [next(first)["label"] for _ in range(3)]
    resumed = make()
    resumed.set_state(state)
    for label in expected:
        np.testing.assert_array_equal(next(resumed)["label"], label)


def _augmented_stream(local_batch=2, process_index=0, process_count=1):
    """Four distinct uint8 'images' through the real-dataset train transform."""
    rng = np.random.default_rng(0)
    source = [{"image": rng.integers(0, 256, (10, 14, 3), dtype=np.uint8),
               "label": rng.integers(0, 3, (10, 14)).astype(np.uint8)} for _ in range(4)]
    transform = transforms.SegmentationTrainTransform(crop_size=(8, 8), base_size=(14, 10),
                                                      ratio_range=(0.8, 1.5))
    return iter(pipeline.train_dataset(source, seed=0, local_batch=local_batch,
                                       process_index=process_index,
                                       process_count=process_count, transform=transform))


def test_pipeline_augments_each_epoch_anew_and_resumes_and_shards_exactly():
    stream = _augmented_stream()
    batches = [next(stream) for _ in range(4)]  # two epochs of the 4 examples
    assert batches[0]["image"].shape == (2, 8, 8, 3) and batches[0]["image"].dtype == np.float32
    # Epoch 2 shows the same 4 examples, augmented differently: no crop repeats exactly.
    first, second = (np.concatenate([b["image"] for b in batches[i:i + 2]]) for i in (0, 2))
    assert not any(np.array_equal(a, b) for a in first for b in second)
    resumed, original = _augmented_stream(), _augmented_stream()
    next(original)
    resumed.set_state(original.get_state())
    for batch in batches[1:]:
        np.testing.assert_array_equal(next(resumed)["image"], batch["image"])
    hosts = [_augmented_stream(1, p, 2) for p in range(2)]  # per-host chunks: same global batch
    for batch in batches:
        np.testing.assert_array_equal(
            np.concatenate([next(h)["label"] for h in hosts]), batch["label"])


def test_eval_batches_cover_each_example_once_and_pad_with_ignore():
    source = SyntheticSegmentation(7, image_size=8, num_classes=5)
    seen = []
    for p in range(2):
        batches = list(pipeline.eval_batches(source, local_batch=3, process_index=p,
                                             process_count=2))
        assert len(batches) == pipeline.num_eval_batches(7, local_batch=3, process_count=2)
        for batch in batches:
            for image, label in zip(batch["image"], batch["label"]):
                if np.all(label == IGNORE_LABEL):
                    continue
                seen.append(image)
    assert len(seen) == 7
    for index in range(7):
        assert sum(np.array_equal(source[index]["image"], s) for s in seen) == 1


# ---------------------------------------------------------------------------- optimization
def test_poly_schedule_with_warmup_matches_mmseg_formula():
    opt = base_config().optimizer
    opt.lr, opt.min_lr, opt.poly_power, opt.warmup_steps, opt.warmup_ratio = 0.1, 1e-3, 0.9, 5, 0.1
    schedule = step_lib.learning_rate_schedule(opt, total_steps=25)
    np.testing.assert_allclose(schedule(0), 0.01, rtol=1e-6)
    np.testing.assert_allclose(schedule(5), 0.1, rtol=1e-6)
    for t in (7, 15, 24):
        expected = (0.1 - 1e-3) * (1 - (t - 5) / 20) ** 0.9 + 1e-3
        np.testing.assert_allclose(schedule(t), expected, rtol=1e-5)


def test_optimizer_is_torch_sgd_with_l2_weight_decay():
    opt = base_config().optimizer
    opt.lr, opt.min_lr, opt.weight_decay, opt.momentum = 0.1, 0.1, 0.01, 0.9  # constant lr
    optimizer = step_lib.make_optimizer(opt, total_steps=10)
    params = {"w": np.array([1.0, -2.0])}
    state = optimizer.init(params)
    momentum, value = np.zeros(2), params["w"].copy()
    for grad in (np.array([0.5, 0.5]), np.array([-1.0, 2.0])):
        updates, state = optimizer.update({"w": grad}, state, params)
        params = optax.apply_updates(params, updates)
        momentum = 0.9 * momentum + grad + 0.01 * value  # torch.optim.SGD
        value = value - 0.1 * momentum
        np.testing.assert_allclose(params["w"], value, rtol=1e-6)


# ------------------------------------------------------------------------ experiment configs
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments", "configs")


CONFIG_FILES = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))


def _load_config_module(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_experiment_configs_validate_build_and_document_their_launch(name):
    module = _load_config_module(name)
    assert f"python -m dnl_jax.main --config experiments/configs/{name}" in module.__doc__
    config = module.get_config()
    _valid(config)
    bundle = get_model(config.model.name, config.data.num_classes, **config.model.kwargs)
    assert bundle.task == for_dataset(config.data.name).name


def test_config_real_dataset_keys_are_checked():
    config = base_config()
    config.data.name = "cityscapes"
    config.data.data_dir = "/does/not/exist"  # checked when the data is opened, not here
    with pytest.raises(ValueError, match="type='batched' does not apply to the segmentation "
                       "dataset 'cityscapes'; use type='segmentation'"):
        _valid(config)
    config.evals.val = segmentation_eval(every_steps=10)
    _valid(config)
    config.evals.val.mode = "slide"
    with pytest.raises(ValueError, match="needs config.evals.val.crop_size and "
                                         "config.evals.val.stride"):
        _valid(config)
    config = base_config()
    config.data.name = "ade20k"
    config.data.segmentation.ratio_range = (2.0, 0.5)
    with pytest.raises(ValueError, match="ratio_range"):
        _valid(config)
    config.data.name = "lvis"
    with pytest.raises(ValueError, match="config.data.name='lvis'; choose one of"):
        _valid(config)


def _video_config(**values):
    config = base_config()
    config.update_from_flattened_dict({"data.name": "kinetics", "model.name": "dnl_i3d_tiny",
                                       "data.video.crop_size": (32, 32),
                                       "data.video.short_side_range": (32, 40)})
    config.evals.val_multi_view = multi_view_eval()
    config.update_from_flattened_dict(values)
    return config


@pytest.mark.parametrize("key, value, message", [
    ("data.video.clip_len", 0, r"config.data.video.clip_len=0 must be >= 1"),
    ("data.video.frame_stride", -1, r"config.data.video.frame_stride=-1 must be >= 1"),
    ("data.video.crop_size", (32, 48), r"crop_size=\(32, 48\): video crops are square"),
    ("data.video.short_side_range", (24, 40), r"short_side_range=\(24, 40\) .* crop side 32 <= low"),
    ("data.video.short_side_range", (40, 36), r"low <= high"),
    ("evals.val_multi_view.num_clips", 0,
     r"config.evals.val_multi_view.num_clips=0 must be an integer >= 1"),
    ("evals.val_multi_view.num_crops", 0,
     r"config.evals.val_multi_view.num_crops=0 must be an integer >= 1"),
    ("evals.val_multi_view.short_side", 16,
     r"evals.val_multi_view.short_side=16 must be 0 \(the crop side\) or >= the crop"),
    ("evals.val.short_side", 16, r"evals.val.short_side=16 must be 0 \(the crop side\)"),
])
def test_config_bad_video_values(key, value, message):
    _valid(_video_config())  # the base of each case is valid
    with pytest.raises(ValueError, match=message):
        _valid(_video_config(**{key: value}))


def test_config_video_keys_are_known_and_models_must_fit_the_dataset_task(tmp_path):
    from dnl_jax.train.trainer import train_and_evaluate

    config = _video_config()
    config.data.clip_length = 8
    with pytest.raises(ValueError, match=r"'data.clip_length'.*Did you mean data.video.clip_len"):
        _valid(config)
    # Checked before any data is read or anything written.
    with pytest.raises(ValueError, match="'dnl_tiny' is a segmentation model but config.data.name"
                                         "='kinetics' is a video dataset"):
        train_and_evaluate(_video_config(**{"model.name": "dnl_tiny", "batch_size": 4}),
                           str(tmp_path / "run"))
    on_images = base_config()
    on_images.model.name = "dnl_i3d_tiny"
    with pytest.raises(ValueError, match="'dnl_i3d_tiny' is a video model"):
        train_and_evaluate(on_images, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


# ------------------------------------------------------------------------------- checkpoints
def test_checkpointer_keeps_the_last_k_and_the_best_by_miou_across_restarts(tmp_path):
    source = SyntheticSegmentation(8, image_size=8, num_classes=5)
    iterator = iter(pipeline.train_dataset(source, seed=0, local_batch=2, process_index=0,
                                           process_count=1))
    checkpointer = Checkpointer(str(tmp_path), every_steps=1, keep=1, keep_best=True)
    signature = {"model": "m", "num_classes": 3, "param_shapes": {}}
    mious = {1: 0.2, 2: 0.9, 3: 0.1, 4: None, 5: 0.3}
    for step, miou in mious.items():
        next(iterator)
        state = {"w": np.full((2,), step, np.float32)}
        assert checkpointer.save(step, state, iterator, signature, metric=miou)
    # The latest (5) and the best (2); 4 had no metrics and is not the latest any more.
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 5]
    fresh = iter(pipeline.train_dataset(source, seed=0, local_batch=2, process_index=0,
                                        process_count=1))
    restored = checkpointer.restore(2, {"w": np.zeros((2,), np.float32)}, fresh)
    np.testing.assert_array_equal(restored["w"], [2.0, 2.0])
    assert fresh.get_state() == {"next_index": 2}  # the data position came back too
    with pytest.raises(ValueError, match="different model m than config.model.name='other'"):
        checkpointer.check_signature(5, {**signature, "model": "other"})
    checkpointer.close()
    # A resumed run (a new manager on the same directory) still knows step 2 is the best.
    reopened = Checkpointer(str(tmp_path), every_steps=1, keep=1, keep_best=True)
    assert reopened.save(6, {"w": np.zeros((2,), np.float32)}, iterator, signature, metric=0.5)
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 6]
    reopened.close()


def test_checkpointer_ranks_classification_runs_by_val_accuracy(tmp_path):
    iterator = iter(pipeline.train_dataset(SyntheticSegmentation(4, image_size=8, num_classes=5),
                                           seed=0, local_batch=2, process_index=0,
                                           process_count=1))
    checkpointer = Checkpointer(str(tmp_path), every_steps=1, keep=1, keep_best=True,
                                best_metric="val_accuracy")
    for step, accuracy in {1: 0.75, 2: 0.5, 3: 0.25}.items():
        checkpointer.save(step, {"w": np.zeros((2,), np.float32)}, iterator,
                          {"model": "m", "num_classes": 3, "param_shapes": {}}, metric=accuracy)
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [1, 3]
    checkpointer.close()
