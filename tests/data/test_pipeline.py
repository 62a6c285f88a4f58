"""The synthetic scenes (deterministic, the beacon decides the class) and the grain pipeline:
per-host sharding, a resumable position, new augmentations each epoch, padded eval batches."""

import numpy as np
import pytest

from dnl_jax import IGNORE_LABEL
from dnl_jax.data import pipeline, synthetic, transforms
from dnl_jax.data.synthetic import SyntheticSegmentation


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
    dark, light = (
        synthetic.draw_scene(np.random.default_rng([7, index]), size, colours, noise=0.0, cue=cue)
        for cue in (0, 1)
    )
    objects, beacon = dark["label"] >= 3, dark["label"] == 1
    assert objects.any()
    np.testing.assert_array_equal(dark["label"][objects] % 2, 1)  # 3 + 2a: odd
    np.testing.assert_array_equal(light["label"], np.where(objects | beacon, dark["label"] + 1, 0))
    changed = np.argwhere(np.any(dark["image"] != light["image"], axis=-1))
    np.testing.assert_array_equal(changed, np.argwhere(beacon))  # exactly the beacon square
    side = size // 4
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert (y1 - y0 + 1, x1 - x0 + 1) == (side, side) and len(changed) == side * side
    assert not objects[max(0, y0 - 1) : y1 + 2, max(0, x0 - 1) : x1 + 2].any()  # clear of objects
    grey = lambda scene: scene["image"][y0 : y1 + 1, x0 : x1 + 1] * 0.25 + 0.5  # noqa: E731
    np.testing.assert_allclose(grey(dark), synthetic.CUE_GREYS[0], atol=1e-6)
    np.testing.assert_allclose(grey(light), synthetic.CUE_GREYS[1], atol=1e-6)


def test_pipeline_two_hosts_together_see_the_one_host_batches():
    source = SyntheticSegmentation(20, image_size=16, num_classes=5)
    one = iter(
        pipeline.train_dataset(source, seed=1, local_batch=4, process_index=0, process_count=1)
    )
    hosts = [
        iter(
            pipeline.train_dataset(source, seed=1, local_batch=2, process_index=p, process_count=2)
        )
        for p in range(2)
    ]
    for _ in range(7):  # crosses an epoch boundary (20 examples)
        expected = next(one)["image"]
        joined = np.concatenate([next(h)["image"] for h in hosts])
        np.testing.assert_array_equal(joined, expected)


def test_pipeline_resumes_from_its_state():
    source = SyntheticSegmentation(12, image_size=16, num_classes=5)

    def make():
        return iter(
            pipeline.train_dataset(
                source,
                seed=0,
                local_batch=4,
                process_index=0,
                process_count=1,
            )
        )

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
    source = [
        {
            "image": rng.integers(0, 256, (10, 14, 3), dtype=np.uint8),
            "label": rng.integers(0, 3, (10, 14)).astype(np.uint8),
        }
        for _ in range(4)
    ]
    transform = transforms.SegmentationTrainTransform(
        crop_size=(8, 8), base_size=(14, 10), ratio_range=(0.8, 1.5)
    )
    return iter(
        pipeline.train_dataset(
            source,
            seed=0,
            local_batch=local_batch,
            process_index=process_index,
            process_count=process_count,
            transform=transform,
        )
    )


def test_pipeline_augments_each_epoch_anew_and_resumes_and_shards_exactly():
    stream = _augmented_stream()
    batches = [next(stream) for _ in range(4)]  # two epochs of the 4 examples
    assert batches[0]["image"].shape == (2, 8, 8, 3) and batches[0]["image"].dtype == np.float32
    # Epoch 2 shows the same 4 examples, augmented differently: no crop repeats exactly.
    first, second = (np.concatenate([b["image"] for b in batches[i : i + 2]]) for i in (0, 2))
    assert not any(np.array_equal(a, b) for a in first for b in second)
    resumed, original = _augmented_stream(), _augmented_stream()
    next(original)
    resumed.set_state(original.get_state())
    for batch in batches[1:]:
        np.testing.assert_array_equal(next(resumed)["image"], batch["image"])
    hosts = [_augmented_stream(1, p, 2) for p in range(2)]  # per-host chunks: same global batch
    for batch in batches:
        np.testing.assert_array_equal(
            np.concatenate([next(h)["label"] for h in hosts]), batch["label"]
        )


def test_eval_batches_cover_each_example_once_and_pad_with_ignore():
    source = SyntheticSegmentation(7, image_size=8, num_classes=5)
    seen = []
    for p in range(2):
        batches = list(
            pipeline.eval_batches(source, local_batch=3, process_index=p, process_count=2)
        )
        assert len(batches) == pipeline.num_eval_batches(7, local_batch=3, process_count=2)
        for batch in batches:
            for image, label in zip(batch["image"], batch["label"], strict=False):
                if np.all(label == IGNORE_LABEL):
                    continue
                seen.append(image)
    assert len(seen) == 7
    for index in range(7):
        assert sum(np.array_equal(source[index]["image"], s) for s in seen) == 1
