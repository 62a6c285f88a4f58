"""grain worker processes for the train input pipeline (`config.data.worker_processes`): the same
batches as augmenting in this process, and an exact resume from the iterator's state."""

import numpy as np
import pytest

from dnl_jax.data import pipeline, transforms


def small_source(count: int = 6):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 5, (24, 32), dtype=np.uint8),
        }
        for _ in range(count)
    ]


def make_iterator(worker_processes: int):
    augment = transforms.SegmentationTrainTransform(crop_size=(8, 8), base_size=(32, 24))
    return iter(
        pipeline.train_dataset(
            small_source(),
            seed=3,
            local_batch=2,
            process_index=0,
            process_count=1,
            transform=augment,
            worker_processes=worker_processes,
            worker_threads=1,
        )
    )


def assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=False):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_worker_processes_give_the_same_batches_and_resume_exactly():
    in_process = make_iterator(0)
    expected = [next(in_process) for _ in range(5)]
    assert expected[0]["image"].shape == (2, 8, 8, 3)
    with_workers = make_iterator(2)
    first = [next(with_workers) for _ in range(2)]
    state = with_workers.get_state()
    assert_same(first + [next(with_workers) for _ in range(3)], expected)
    resumed = make_iterator(2)
    resumed.set_state(state)
    assert_same([next(resumed) for _ in range(3)], expected[2:])


def test_worker_settings_come_from_the_config_and_bad_values_are_named():
    from dnl_jax.train.config import base_config

    data = base_config().data
    data.worker_processes, data.worker_threads = 3, 2
    assert pipeline.worker_settings(data) == {"worker_processes": 3, "worker_threads": 2}
    with pytest.raises(ValueError, match="worker_processes=-1"):
        pipeline.train_dataset(
            small_source(),
            seed=0,
            local_batch=2,
            process_index=0,
            process_count=1,
            worker_processes=-1,
        )
