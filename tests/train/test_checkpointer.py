"""The checkpointer: keeps the last K and the best by the task's val metric across restarts."""

import os

import numpy as np
import pytest

from dnl_jax.data import pipeline
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.train.checkpoint import Checkpointer


def test_checkpointer_keeps_the_last_k_and_the_best_by_miou_across_restarts(tmp_path):
    source = SyntheticSegmentation(8, image_size=8, num_classes=5)
    iterator = iter(
        pipeline.train_dataset(source, seed=0, local_batch=2, process_index=0, process_count=1)
    )
    checkpointer = Checkpointer(str(tmp_path), every_steps=1, keep=1, keep_best=True)
    signature = {"model": "m", "num_classes": 3, "param_shapes": {}}
    mious = {1: 0.2, 2: 0.9, 3: 0.1, 4: None, 5: 0.3}
    for step, miou in mious.items():
        next(iterator)
        state = {"w": np.full((2,), step, np.float32)}
        assert checkpointer.save(step, state, iterator, signature, metric=miou)
    # The latest (5) and the best (2); 4 had no metrics and is not the latest any more.
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 5]
    fresh = iter(
        pipeline.train_dataset(source, seed=0, local_batch=2, process_index=0, process_count=1)
    )
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
    iterator = iter(
        pipeline.train_dataset(
            SyntheticSegmentation(4, image_size=8, num_classes=5),
            seed=0,
            local_batch=2,
            process_index=0,
            process_count=1,
        )
    )
    checkpointer = Checkpointer(
        str(tmp_path), every_steps=1, keep=1, keep_best=True, best_metric="val_accuracy"
    )
    for step, accuracy in {1: 0.75, 2: 0.5, 3: 0.25}.items():
        checkpointer.save(
            step,
            {"w": np.zeros((2,), np.float32)},
            iterator,
            {"model": "m", "num_classes": 3, "param_shapes": {}},
            metric=accuracy,
        )
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [1, 3]
    checkpointer.close()
