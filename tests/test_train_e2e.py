"""End-to-end tests of `train_and_evaluate` and the CLI on the tiny model (4 fake CPU devices):
one step, jit == pmap, interrupted (SIGTERM) + resumed == uninterrupted, and workdir errors."""

import json
import os
import signal
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from dnl_jax.train.config import base_config
from dnl_jax.train.trainer import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    config = base_config()
    config.model.name = "dnl_tiny"
    config.data.image_size = 32
    config.data.num_classes = 5
    config.data.num_train = 64
    config.data.num_val = 16
    config.batch_size = 8
    config.eval_batch_size = 8
    config.total_steps = 1
    config.eval_every_steps = 100
    config.checkpoint.every_steps = 100
    config.progress_bar = False
    config.curves_figure = False
    config.update_from_flattened_dict(overrides)
    return config


def test_one_step_end_to_end(tmp_path):
    config = tiny_config(**{"curves_figure": True})
    result = train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "completed" and result["step"] == 1
    assert 0.0 <= result["val"]["miou"] <= 1.0
    assert os.path.isdir(tmp_path / "checkpoints" / "1" / "state")
    assert os.path.exists(result["curves"])
    assert any(name.startswith("events.out.tfevents") for name in
               os.listdir(tmp_path / "tensorboard"))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {(r["step"], r["split"]) for r in records} == {(0, "val"), (1, "train"), (1, "val")}
    assert np.isfinite(next(r for r in records if r["split"] == "train")["loss"])
    assert json.load(open(tmp_path / "config.json"))["model"]["name"] == "dnl_tiny"


def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
    config = tiny_config(**{"model.dtype": "bfloat16", "total_steps": 2,
                            "optimizer.grad_clip_norm": 1.0})
    result = train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "completed" and np.isfinite(result["val"]["miou"])
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(result["state"].params)}
    assert dtypes == {np.dtype(np.float32)}


def _no_dropout(next_fun, args, kwargs, context):
    # Under pmap every device draws its own dropout mask, under jit one global mask is drawn:
    # the two cannot agree, so this comparison switches dropout off (and nothing else).
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
        return args[0]
    return next_fun(*args, **kwargs)


def test_jit_and_pmap_drivers_give_the_same_parameters(tmp_path):
    finals = {}
    with nn.intercept_methods(_no_dropout):
        for parallelism in ("jit", "pmap"):
            config = tiny_config(parallelism=parallelism, total_steps=3, batch_size=8)
            finals[parallelism] = train_and_evaluate(config, str(tmp_path / parallelism))
    jit, pmap = finals["jit"]["state"], finals["pmap"]["state"]
    assert int(jit.step) == int(pmap.step) == 3
    chex.assert_trees_all_close(jit.params, pmap.params, rtol=2e-5, atol=1e-6)
    chex.assert_trees_all_close(jit.batch_stats, pmap.batch_stats, rtol=2e-5, atol=1e-6)
    # The parameters did move: the comparison is not between two initialisations.
    first_leaf = lambda tree: jax.tree.leaves(tree)[0]  # noqa: E731
    fresh = train_and_evaluate(tiny_config(total_steps=1, **{"optimizer.lr": 1e-12,
                                                             "optimizer.min_lr": 0.0}),
                               str(tmp_path / "fresh"))["state"]
    assert not np.allclose(first_leaf(fresh.params), first_leaf(jit.params))


def test_sigterm_checkpoints_and_resume_equals_uninterrupted_run(tmp_path):
    overrides = {"total_steps": 6, "checkpoint.every_steps": 2, "eval_every_steps": 4,
                 "grad_accum_steps": 2}
    reference = train_and_evaluate(tiny_config(**overrides), str(tmp_path / "reference"))

    def send_sigterm_at_step_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path / "interrupted")
    first = train_and_evaluate(tiny_config(**overrides), workdir, on_step=send_sigterm_at_step_3)
    assert first["status"] == "preempted" and first["step"] == 3
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "3"
    resumed = train_and_evaluate(tiny_config(**overrides), workdir)
    assert resumed["status"] == "completed" and resumed["step"] == 6
    chex.assert_trees_all_equal(resumed["state"], reference["state"])
    assert resumed["val"]["miou"] == reference["val"]["miou"]


def test_workdir_of_another_model_is_refused_untouched(tmp_path):
    train_and_evaluate(tiny_config(), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(ValueError, match="different .* nothing was overwritten"):
        train_and_evaluate(tiny_config(**{"data.num_classes": 4, "total_steps": 2}),
                           str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
    # Same model and workdir, now with NaN images: the resumed run's first step (3) is NaN.
    poisoned = tiny_config(**{"total_steps": 4, "data.noise": float("nan")})
    with pytest.raises(FloatingPointError, match="at step 3.*Last good checkpoint: step 2"):
        train_and_evaluate(poisoned, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_init_from_takes_the_parameters_of_a_checkpoint(tmp_path):
    source = train_and_evaluate(tiny_config(total_steps=2), str(tmp_path / "source"))
    config = tiny_config(**{"init_from": str(tmp_path / "source" / "checkpoints" / "2"),
                            "optimizer.lr": 1e-12, "optimizer.min_lr": 0.0, "total_steps": 1})
    started = train_and_evaluate(config, str(tmp_path / "started"))
    chex.assert_trees_all_close(started["state"].params, source["state"].params, atol=1e-9)


def _cli(workdir, *overrides):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "dnl_jax.main",
               "--config", os.path.join(REPO, "experiments/configs/synthetic_dnl_tiny.py"),
               "--workdir", str(workdir), *overrides]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)


def test_cli_one_step(tmp_path):
    done = _cli(tmp_path, "--config.total_steps=1", "--config.data.num_val=16",
                "--config.optimizer.warmup_steps=0",
                "--config.progress_bar=False")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed at step 1: val mIoU" in done.stdout
    assert os.path.isdir(tmp_path / "checkpoints" / "1")
    assert os.path.exists(tmp_path / "curves.png")


def test_cli_rejects_unknown_key(tmp_path):
    done = _cli(tmp_path, "--config.optimiser.lr=0.1")
    assert done.returncode != 0
    assert "optimiser" in done.stderr
    assert not os.path.exists(tmp_path / "checkpoints")
