"""Checkpoint integrity (dnl_jax.train.checksums): every save records a checksum of each array in
the step's own `checksums` item; a step whose bytes changed on disk (not truncated: it still
decodes) is set aside on restore with a warning naming the step and the array, and the previous
step restores; reading it for evaluation is one error naming the newest good step."""

import glob
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpoint_recovery import SIGNATURE, _iterator, _open

from dnl_jax.train import checksums
from dnl_jax.train.checkpoint import DamagedCheckpoint, load_variables

# Random bits: they do not compress, so the chunk is stored as it is and changed bytes still
# decode (what the 4 KiB of random bytes inside a real checkpoint did); inside a
# compressed chunk they fail to decode, which was damage before checksums too.
SHAPE = (128, 256)


def _random_bits(rng, shape):
    return rng.integers(0, 2**32, size=shape, dtype=np.uint32).view(np.float32)


def _state(step):
    rng = np.random.default_rng(step)
    return {
        "params": {"conv": {"kernel": _random_bits(rng, SHAPE)}},
        "batch_stats": {"bn": {"mean": _random_bits(rng, (256,))}},
        "step": np.asarray(step, np.int32),
    }


def _save(directory, steps, state=_state):
    iterator, checkpointer = _iterator(), _open(directory)
    for step in steps:
        next(iterator)
        checkpointer.save(step, state(step), iterator, SIGNATURE)
    checkpointer.close()


def _flip_middle_of_largest_array_file(step_dir, size=4096):
    """Overwrites `size` random bytes in the middle of the step's largest array data file."""
    files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2 - size // 2)
        file.write(np.random.default_rng(1).bytes(size))


def test_checksums_are_layout_independent_and_see_one_changed_word():
    array = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    words = array.view(np.uint32).ravel().astype(np.uint64)
    index = np.arange(1, words.size + 1, dtype=np.uint64)
    expected = f"{int(words.sum() % 2**32):08x}-{int((words * index).sum() % 2**32):08x}"
    assert checksums.tree_checksums({"a": array})["a"] == expected
    assert checksums.tree_checksums({"a": jnp.asarray(array)})["a"] == expected
    # The jitted reduction (arrays sharded over processes) gives the host's sums.
    rng = np.random.default_rng(1)
    for odd in (rng.standard_normal((1025, 3)), rng.integers(0, 255, 4097).astype(np.uint8)):
        on_device = [int(v) for v in checksums._all_sums([jnp.asarray(odd)])[0]]
        assert checksums.host_sums(odd.astype(jnp.asarray(odd).dtype)) == tuple(on_device)
    changed = array.copy()
    changed[1, 2, 3] = np.nextafter(changed[1, 2, 3], np.float32(np.inf))
    assert checksums.tree_checksums({"a": changed})["a"] != expected
    swapped = array.copy().ravel()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert checksums.tree_checksums({"a": swapped.reshape(array.shape)})["a"] != expected
    bf16 = checksums.tree_checksums({"b": jnp.ones((4,), jnp.bfloat16), "k": np.bool_(True)})
    assert set(bf16) == {"b", "k"}


def test_each_save_records_the_checksum_of_every_array(tmp_path):
    _save(tmp_path, [1])
    with open(tmp_path / "1" / checksums.ITEM / "metadata") as file:
        saved = json.load(file)
    assert set(saved) == {"params/conv/kernel", "batch_stats/bn/mean", "step"}
    assert saved == checksums.tree_checksums(_state(1))


def test_changed_bytes_set_the_step_aside_and_the_previous_one_restores(tmp_path, caplog):
    _save(tmp_path, [1, 2])
    _flip_middle_of_largest_array_file(str(tmp_path / "2"))
    checkpointer = _open(tmp_path)
    with caplog.at_level(logging.WARNING):
        step, state = checkpointer.restore_latest(_state(0), _iterator(), SIGNATURE)
    checkpointer.close()
    assert step == 1
    np.testing.assert_array_equal(
        state["params"]["conv"]["kernel"], _state(1)["params"]["conv"]["kernel"]
    )
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "checkpoint step 2" in warning and "params/conv/kernel" in warning, warning
    assert "checksum mismatch" in warning, warning
    assert sorted(os.listdir(str(tmp_path) + "-unrestorable")) == ["2"]


def test_reading_a_changed_step_names_the_array_and_the_newest_good_step(tmp_path):
    _save(tmp_path, [1, 2, 3])
    _flip_middle_of_largest_array_file(str(tmp_path / "3"))
    with pytest.raises(DamagedCheckpoint) as caught:
        load_variables(str(tmp_path / "3"))
    message = str(caught.value)
    assert "\n" not in message
    assert "params/conv/kernel" in message, message
    assert f"the newest good checkpoint beside it is step 2 ({tmp_path / '2'})" in message
    variables = load_variables(str(tmp_path / "2"))  # verified: the names match the saved ones
    np.testing.assert_array_equal(
        variables["batch_stats"]["bn"]["mean"], _state(2)["batch_stats"]["bn"]["mean"]
    )


def _state_with_optimizer(step):
    """_state plus an optimizer array four times the largest parameter."""
    rng = np.random.default_rng(100 + step)
    return {**_state(step), "opt_state": {"trace": _random_bits(rng, (4 * SHAPE[0], SHAPE[1]))}}


def test_reading_variables_checks_the_optimizer_arrays_it_read_too(tmp_path):
    """Only params and batch_stats are returned, but changed bytes in an optimizer array are
    damage too (before, they passed unseen when stored uncompressed)."""
    _save(tmp_path, [1, 2], _state_with_optimizer)
    _flip_middle_of_largest_array_file(str(tmp_path / "2"))
    with pytest.raises(DamagedCheckpoint) as caught:
        load_variables(str(tmp_path / "2"))
    message = str(caught.value)
    assert "opt_state/trace" in message and "checksum mismatch" in message, message
    assert f"the newest good checkpoint beside it is step 1 ({tmp_path / '1'})" in message
    assert set(load_variables(str(tmp_path / "1"))) == {"params", "batch_stats"}
