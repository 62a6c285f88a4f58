"""The trainer resumes past a damaged newest checkpoint: the run that follows ends with the same
state as the run that wrote it (the fallback step's data position and RNG come back too)."""

import glob
import logging
import os

import chex
from train_testing import enable_compilation_cache, tiny_config

from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()


def test_truncated_newest_checkpoint_resumes_from_the_previous_one(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    reference = train_and_evaluate(tiny_config(), workdir)  # checkpoints at steps 2 and 4
    for path in glob.glob(
        os.path.join(workdir, "checkpoints", "4", "state", "**", "*"), recursive=True
    ):
        if os.path.isfile(path):  # cut short, as a full disk could leave them
            with open(path, "r+b") as file:
                file.truncate(os.path.getsize(path) // 2)
    with caplog.at_level(logging.INFO):
        again = train_and_evaluate(tiny_config(), workdir)
    messages = [record.getMessage() for record in caplog.records]
    assert any("checkpoint step 4" in m and "does not restore" in m for m in messages)
    assert any("resumed from" in m and m.endswith("at step 2") for m in messages)
    assert os.path.isdir(os.path.join(workdir, "checkpoints-unrestorable", "4"))
    assert again["status"] == "completed" and again["step"] == 4
    chex.assert_trees_all_equal(again["state"], reference["state"])
