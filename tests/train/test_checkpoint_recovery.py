"""Resuming past an unrestorable newest checkpoint (dnl_jax.train.checkpoint.restore_latest):
truncated or corrupted files are set aside with a warning and the next older step restores;
nothing is deleted, and a directory where no step restores is an error that moves nothing."""

import glob
import logging
import os

import numpy as np
import pytest

from dnl_jax.data import pipeline
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.train.checkpoint import Checkpointer

SIGNATURE = {"model": "m", "num_classes": 3, "param_shapes": {}}
TARGET = {"w": np.zeros((64,), np.float32)}


def _iterator():
    source = SyntheticSegmentation(8, image_size=8, num_classes=5)
    return iter(
        pipeline.train_dataset(source, seed=0, local_batch=2, process_index=0, process_count=1)
    )


def _open(directory):
    return Checkpointer(str(directory), every_steps=1, keep=3, keep_best=True)


def _save_steps(directory, steps):
    """Saves `w = step` at each step, the iterator advanced once per step."""
    iterator, checkpointer = _iterator(), _open(directory)
    for step in steps:
        next(iterator)
        checkpointer.save(
            step, {"w": np.full((64,), step, np.float32)}, iterator, SIGNATURE, metric=0.1 * step
        )
    checkpointer.close()


def _files(step_dir, pattern):
    return [
        p for p in glob.glob(os.path.join(step_dir, pattern), recursive=True) if os.path.isfile(p)
    ]


def _truncate_state(step_dir):  # e.g. a full disk: the array store cut short
    for path in _files(step_dir, "state/**/*"):
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)


def _corrupt_state_data(step_dir):  # bit rot / a torn write inside the array chunks
    for path in _files(step_dir, "state/**/d/*"):
        with open(path, "r+b") as file:
            file.write(np.random.default_rng(0).bytes(os.path.getsize(path)))


def _truncate_everything(step_dir):  # every file empty: orbax cannot even open the directory
    for path in _files(step_dir, "**/*"):
        open(path, "w").close()


def _truncate_data_position(step_dir):
    for path in _files(step_dir, "data/*.json"):
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize(
    "damage", [_truncate_state, _corrupt_state_data, _truncate_everything, _truncate_data_position]
)
def test_unrestorable_newest_step_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    directory = tmp_path / "checkpoints"
    _save_steps(directory, [1, 2])
    damage(str(directory / "2"))
    iterator = _iterator()
    with caplog.at_level(logging.WARNING):
        checkpointer = _open(directory)
        step, state = checkpointer.restore_latest(TARGET, iterator, SIGNATURE)
    assert step == 1
    np.testing.assert_array_equal(state["w"], np.full((64,), 1.0))
    assert iterator.get_state() == {"next_index": 1}  # step 1's data position (1 batch)
    warnings = [r.getMessage() for r in caplog.records if "step 2" in r.getMessage()]
    assert len(warnings) == 1 and "does not restore" in warnings[0]
    aside = tmp_path / "checkpoints-unrestorable" / "2"
    assert str(aside) in warnings[0] and aside.is_dir()  # kept, not deleted
    assert checkpointer.latest_step() == 1
    # The run goes on and saves step 2 again (the damaged one no longer blocks the name).
    assert checkpointer.save(
        2, {"w": np.full((64,), 2, np.float32)}, iterator, SIGNATURE, force=True
    )
    assert sorted(os.listdir(directory)) == ["1", "2"]
    checkpointer.close()


def test_no_step_restores_is_an_error_that_moves_nothing(tmp_path):
    directory = tmp_path / "checkpoints"
    _save_steps(directory, [1, 2])
    for step in ("1", "2"):
        _truncate_state(str(directory / step))
    checkpointer = _open(directory)
    with pytest.raises(
        ValueError,
        match=r"no checkpoint in .* restores \(step 2: .*step 1: .*"
        r"nothing was moved or deleted",
    ):
        checkpointer.restore_latest(TARGET, _iterator(), SIGNATURE)
    assert sorted(os.listdir(directory)) == ["1", "2"]
    assert not (tmp_path / "checkpoints-unrestorable").exists()
    checkpointer.close()


def test_another_model_is_an_error_not_a_skipped_step(tmp_path):
    directory = tmp_path / "checkpoints"
    _save_steps(directory, [1])
    checkpointer = _open(directory)
    with pytest.raises(ValueError, match="different model m than config.model.name='other'"):
        checkpointer.restore_latest(TARGET, _iterator(), {**SIGNATURE, "model": "other"})
    assert os.listdir(directory) == ["1"]
    checkpointer.close()


def test_empty_directory_restores_nothing(tmp_path):
    checkpointer = _open(tmp_path / "checkpoints")
    assert checkpointer.restore_latest(TARGET, _iterator(), SIGNATURE) is None
    checkpointer.close()
