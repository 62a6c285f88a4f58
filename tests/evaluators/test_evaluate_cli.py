"""`python -m dnl_jax.cli.evaluate` on the embedded synthetic dataset: the same val metrics as the
trainer's final evaluation of the checkpoint, the checkpoint checked against the config's model,
`--config.model.kwargs.NAME=VALUE`, and every bad input one line on stderr (no traceback)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from train_testing import CACHE_ENV, enable_compilation_cache, tiny_config

from dnl_jax.cli.evaluate import evaluate_checkpoint
from dnl_jax.cli.flags import pop_model_kwargs_flags, set_model_kwargs
from dnl_jax.train.checkpoint_paths import step_directory
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "experiments", "configs", "synthetic_dnl_tiny.py")
# The demo config shrunk to the shared tiny run's values (equal configs share compilations).
TINY_FLAGS = [
    "--config.data.synthetic.image_size=32",
    "--config.data.num_classes=5",
    "--config.data.synthetic.num_train=64",
    "--config.data.synthetic.num_val=16",
    "--config.evals.val.batch_size=8",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(total_steps=1)
    return train_and_evaluate(config, str(workdir)), config


def _evaluate_cli(*flags):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **CACHE_ENV)
    return subprocess.run(
        [sys.executable, "-m", "dnl_jax.cli.evaluate", *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def test_evaluate_equals_the_trainers_final_evaluation(trained):
    result, config = trained
    checkpoint = os.path.join(result["workdir"], "checkpoints", "1")
    offline = evaluate_checkpoint(config, checkpoint, "val", log=lambda _: 0)["val"]
    assert offline["miou"] == result["val"]["miou"]
    np.testing.assert_array_equal(offline["per_class_iou"], result["val"]["per_class_iou"])
    # The command line (model.kwargs set from the command line too: dropout is off in eval).
    done = _evaluate_cli(
        f"--config={CONFIG}",
        f"--checkpoint={checkpoint}",
        *TINY_FLAGS,
        "--config.model.kwargs.dropout_rate=0.0",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"val \(val\): val mIoU ([0-9.]+)", done.stdout)
    assert printed and printed.group(1) == f"{result['val']['miou']:.4f}", done.stdout
    assert "class 4" in done.stdout  # the IoU table, with numbered classes


def test_evaluate_errors_name_the_problem(trained, tmp_path):
    result, config = trained
    checkpoints = os.path.join(result["workdir"], "checkpoints")
    with pytest.raises(
        ValueError,
        match=r"missing does not exist; give a step directory .* "
        r"Steps in .*checkpoints: \[1\]",
    ):
        evaluate_checkpoint(config, os.path.join(checkpoints, "missing"), "val")
    # The checkpoints/ directory means its latest step (evaluate and analyze resolve alike).
    assert step_directory(checkpoints) == os.path.join(checkpoints, "1")
    seven = tiny_config(**{"data.num_classes": 7})
    with pytest.raises(
        ValueError,
        match=r"does not fit config.model.name='dnl_tiny' with "
        r"config.data.num_classes=7 \(it was saved for model "
        r"'dnl_tiny' with 5 classes\): .*conv_seg",
    ):
        evaluate_checkpoint(seven, os.path.join(checkpoints, "1"), "val")
    with pytest.raises(ValueError, match="the synthetic scenes have a 'val' split only"):
        evaluate_checkpoint(config, os.path.join(checkpoints, "1"), "train")
    unknown = tiny_config()
    set_model_kwargs(unknown, {"dropout_rat": 0.0})
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['dropout_rat'\]"):
        evaluate_checkpoint(unknown, os.path.join(checkpoints, "1"), "val")


def test_evaluate_command_errors_are_one_line(tmp_path):
    done = _evaluate_cli(f"--config={CONFIG}", f"--checkpoint={tmp_path / 'nothing'}")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"evaluate: --checkpoint={tmp_path / 'nothing'} does not exist")
    )
    done = _evaluate_cli(
        f"--config={CONFIG}", f"--checkpoint={tmp_path}", "--config.model.kwargs.dropout_rate"
    )
    assert done.returncode == 1 and "write --config.model.kwargs.NAME=VALUE" in done.stderr


def test_model_kwargs_flags_are_parsed_as_literals():
    argv, kwargs = pop_model_kwargs_flags(
        [
            "prog",
            "--config.total_steps=3",
            "--config.model.kwargs.dropout_rate=0",
            "--config.model.kwargs.ohem={'thresh': 0.7, 'min_kept': 10}",
            "--config.model.kwargs.implementation=xla",
        ]
    )
    assert argv == ["prog", "--config.total_steps=3"]
    assert kwargs == {
        "dropout_rate": 0,
        "ohem": {"thresh": 0.7, "min_kept": 10},
        "implementation": "xla",
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        pop_model_kwargs_flags(["--config.model.kwargs.=1"])


def test_main_refuses_an_unknown_model_argument_in_one_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **CACHE_ENV)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnl_jax.cli.train",
            f"--config={CONFIG}",
            f"--workdir={tmp_path}",
            "--config.model.kwargs.dropout_rat=0",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert re.search(
        r"main: unknown override\(s\) \['dropout_rat'\] .* valid: .*'dropout_rate'",
        done.stderr.strip().splitlines()[-1],
    )
