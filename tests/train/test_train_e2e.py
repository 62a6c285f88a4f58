"""End-to-end tests of `train_and_evaluate` and the CLI on the tiny model (4 fake CPU devices):
one step, jit == pmap, SIGTERM + resume == uninterrupted, NaN stop, workdir errors, init_from."""

import json
import os
import re
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from train_testing import CACHE_ENV, enable_compilation_cache, tiny_config

from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.logs import read_metrics
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The interrupted/resumed and NaN tests share this config (and so its compiled programs).
ACCUMULATING = {"grad_accum_steps": 2}


def _sigterm_at(stop_step):
    def on_step(step):
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


def test_one_step_end_to_end_then_init_from_and_wrong_model(tmp_path):
    source = tmp_path / "source"
    result = train_and_evaluate(
        tiny_config(total_steps=1, curves_figure=True, attention_figure=True), str(source)
    )
    assert result["status"] == "completed" and result["step"] == 1
    assert 0.0 <= result["val"]["miou"] <= 1.0
    assert os.path.isdir(source / "checkpoints" / "1" / "state")
    assert os.path.exists(result["curves"])
    assert result["attention"] == str(source / "attention.png")
    assert os.path.getsize(result["attention"]) > 0
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(source / "tensorboard"))
    records = read_metrics(str(source))
    assert {(r["step"], r["split"]) for r in records} == {(0, "val"), (1, "train"), (1, "val")}
    assert np.isfinite(next(r for r in records if r["split"] == "train")["loss"])
    recorded = json.loads((source / "config.json").read_text())
    assert recorded["model"]["name"] == "dnl_tiny"
    # Only what the run reads: the synthetic scenes' section, no other task's.
    assert set(recorded["data"]) & {"synthetic", "segmentation", "video", "detection"} == {
        "synthetic"
    }

    # init_from: the new run's step-0 evaluation is the source's final one (same weights).
    started = tmp_path / "started"
    train_and_evaluate(
        tiny_config(total_steps=1, init_from=str(source / "checkpoints" / "1")), str(started)
    )
    step0 = next(r for r in read_metrics(str(started)) if r["step"] == 0)
    assert step0["miou"] == pytest.approx(result["val"]["miou"], abs=1e-12)
    assert step0["pixel_accuracy"] == pytest.approx(result["val"]["pixel_accuracy"], abs=1e-12)

    # A workdir holding another model's checkpoint is refused before anything is written.
    before = sorted(os.listdir(source)), sorted(os.listdir(source / "checkpoints"))
    with pytest.raises(ValueError, match="different .* nothing was overwritten"):
        train_and_evaluate(tiny_config(**{"data.num_classes": 7}), str(source))
    assert (sorted(os.listdir(source)), sorted(os.listdir(source / "checkpoints"))) == before
    with pytest.raises(ValueError, match="init_from.* not a directory"):
        train_and_evaluate(tiny_config(init_from=str(tmp_path / "missing")), str(tmp_path / "x"))


def test_jit_and_pmap_drivers_give_the_same_parameters(tmp_path):
    # Under pmap every device draws its own dropout mask, under jit one global mask is drawn:
    # the two cannot agree, so this comparison switches dropout off (and nothing else).
    finals = {}
    for parallelism in ("jit", "pmap"):
        config = tiny_config(parallelism=parallelism)
        config.model.kwargs.dropout_rate = 0.0
        finals[parallelism] = train_and_evaluate(config, str(tmp_path / parallelism))
    jit, pmap = finals["jit"]["state"], finals["pmap"]["state"]
    assert int(jit.step) == int(pmap.step) == 4
    chex.assert_trees_all_close(jit.params, pmap.params, rtol=2e-5, atol=1e-6)
    chex.assert_trees_all_close(jit.batch_stats, pmap.batch_stats, rtol=2e-5, atol=1e-6)
    # Momentum traces are sums of gradients; a batch-norm bias's gradient is a sum over all
    # pixels with heavy cancellation, so the drivers' different reduction orders leave absolute
    # differences of a few 1e-6 on traces of ~1e-3 (a missing pmean would differ by ~1e-3).
    chex.assert_trees_all_close(jit.opt_state, pmap.opt_state, rtol=2e-5, atol=2e-5)
    # The parameters moved: the comparison is not between two initialisations.
    first_val = [r for r in read_metrics(str(tmp_path / "jit")) if r["split"] == "val"]
    assert first_val[0]["step"] == 0 and first_val[-1]["step"] == 4
    assert first_val[0]["pixel_accuracy"] != first_val[-1]["pixel_accuracy"]


def test_sigterm_checkpoints_and_resume_equals_uninterrupted_run(tmp_path):
    reference = train_and_evaluate(tiny_config(**ACCUMULATING), str(tmp_path / "reference"))
    workdir = str(tmp_path / "interrupted")
    first = train_and_evaluate(tiny_config(**ACCUMULATING), workdir, on_step=_sigterm_at(3))
    assert first["status"] == "preempted" and first["step"] == 3
    # Step 2 by the interval, step 3 by SIGTERM.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
    resumed = train_and_evaluate(tiny_config(**ACCUMULATING), workdir)
    assert resumed["status"] == "completed" and resumed["step"] == 4
    chex.assert_trees_all_equal(resumed["state"], reference["state"])
    assert resumed["val"]["miou"] == reference["val"]["miou"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    first = train_and_evaluate(tiny_config(**ACCUMULATING), str(tmp_path), on_step=_sigterm_at(2))
    assert first["step"] == 2
    # Same model and workdir, now with NaN images: the resumed run's first step (3) is NaN.
    poisoned = tiny_config(**ACCUMULATING, **{"data.synthetic.noise": float("nan")})
    with pytest.raises(FloatingPointError, match="at step 3.*Last good checkpoint: step 2"):
        train_and_evaluate(poisoned, str(tmp_path), allow_config_change=True)  # changed data
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def _cli(workdir, *overrides):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **CACHE_ENV)
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.train",
        "--config",
        os.path.join(REPO, "experiments/configs/synthetic_dnl_tiny.py"),
        "--workdir",
        str(workdir),
        *overrides,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_cli_one_step_in_bfloat16_keeps_float32_parameters(tmp_path):
    done = _cli(
        tmp_path,
        "--config.total_steps=1",
        "--config.optimizer.warmup_steps=0",
        "--config.data.synthetic.num_val=16",
        "--config.model.dtype=bfloat16",
        "--config.optimizer.grad_clip_norm=1.0",
        "--config.progress_bar=False",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed at step 1: val mIoU" in done.stdout
    assert os.path.exists(tmp_path / "curves.png")
    variables = load_variables(str(tmp_path / "checkpoints" / "1"))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {np.dtype("float32")}
    # The evaluate command runs the model in bfloat16 too: the trainer's final val metrics.
    trained = re.search(
        r"completed at step 1: (val mIoU [0-9.]+, pixel accuracy [0-9.]+)", done.stdout
    ).group(1)
    env = dict(os.environ, JAX_PLATFORMS="cpu", **CACHE_ENV)
    evaluated = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnl_jax.cli.evaluate",
            "--config",
            os.path.join(REPO, "experiments/configs/synthetic_dnl_tiny.py"),
            f"--checkpoint={tmp_path / 'checkpoints' / '1'}",
            "--config.data.synthetic.num_val=16",
            "--config.model.dtype=bfloat16",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"val (val): {trained}" in evaluated.stdout


def test_cli_rejects_unknown_key(tmp_path):
    done = _cli(tmp_path, "--config.optimiser.lr=0.1")
    assert done.returncode != 0
    assert "optimiser" in done.stderr
    assert not os.path.exists(tmp_path / "checkpoints")
