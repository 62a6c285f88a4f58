"""Video action recognition through the one trainer (`train_and_evaluate`, 4 fake CPU devices) on
a Kinetics-layout fixture of tiny mpeg4 videos written here: a 2-step run of the tiny I3D (clips
of 4 frames of 32x32) whose final multi-view accuracy equals the evaluate command's; pmap == jit;
SIGTERM + resume == the uninterrupted run; the recipe config through the CLI for one step."""

import json
import os
import signal
import subprocess
import sys

import chex
import numpy as np
import pytest
from data_fixtures import write_video
from train_testing import CACHE_ENV, enable_compilation_cache

from dnl_jax import recipes
from dnl_jax.data.prepare import prepare
from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.logs import read_metrics
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Two classes of flat colours; 4 training videos, 3 val videos (so the eval batch of 4 is padded).
VIDEOS = {
    "train": [
        ("abseiling", (200, 40, 40)),
        ("abseiling", (180, 60, 40)),
        ("juggling", (40, 40, 200)),
        ("juggling", (40, 60, 180)),
    ],
    "val": [("abseiling", (190, 50, 40)), ("juggling", (40, 50, 190)), ("juggling", (60, 40, 200))],
}
# The clip and view settings every run here shares (equal configs compile equal programs).
TINY_VIDEO = {
    "data.video.short_side_range": (32, 36),
    "evals.val_multi_view.num_clips": 2,
    "evals.val_multi_view.num_crops": 2,
    "evals.val_multi_view.short_side": 0,
    "evals.val.short_side": 0,
    "evals.val.batch_size": 4,
    "evals.val.every_steps": 100,
    "checkpoint.every_steps": 1,
    "log_every_steps": 1,
    "progress_bar": False,
    "curves_figure": False,
    "attention_figure": False,
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The prepared Kinetics-layout fixture: class folders of mpeg4 videos (8 frames, 32x40)."""
    root = tmp_path_factory.mktemp("kinetics")
    for split, videos in VIDEOS.items():
        for i, (name, colour) in enumerate(videos):
            write_video(
                root / "raw" / split / name / f"v{i}.mp4", colour, frames=8, height=32, width=40
            )
    prepare("kinetics", str(root / "raw"), str(root / "out"), short_side=32, log=lambda _: 0)
    return str(root / "out")


def video_config(data_dir, **overrides):
    """The Kinetics recipe shrunk to the tiny I3D on the fixture. Dropout off: pmap draws a mask
    per device and jit one global mask, so only without it can their parameters agree."""
    config = recipes.video_recipe(
        model="dnl_i3d_tiny",
        num_classes=2,
        clip_len=4,
        frame_stride=1,
        crop_size=32,
        batch_size=4,
        total_steps=2,
        data_dir=data_dir,
    )
    config.update_from_flattened_dict({**TINY_VIDEO, **overrides})
    config.model.update(pretrained="", from_scratch=True)  # a tiny model: nothing published
    config.model.kwargs.dropout_rate = 0.0
    return config


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """An uninterrupted 2-step jit run (with the curves and the attention-figure switch on)."""
    workdir = tmp_path_factory.mktemp("reference")
    config = video_config(prepared, curves_figure=True, attention_figure=True)
    return train_and_evaluate(config, str(workdir)), config


def test_video_run_logs_counts_and_matches_the_evaluate_command(reference):
    from dnl_jax.cli.evaluate import evaluate_checkpoint

    result, config = reference
    assert (result["status"], result["step"]) == ("completed", 2)
    val = result["val"]
    assert val["count"] == len(VIDEOS["val"])  # the padded slot of the eval batch is not counted
    assert val["accuracy"] == val["correct"] / val["count"]
    # The final 2 clips x 2 crops test equals the offline command on the saved checkpoint.
    offline = evaluate_checkpoint(
        config, os.path.join(result["workdir"], "checkpoints", "2"), "val", log=lambda _: 0
    )
    assert offline["val_multi_view"] == {k: val[k] for k in ("clip_accuracy", "video_accuracy")}
    assert offline["val"] == {k: val[k] for k in ("accuracy", "correct", "count")}
    records = read_metrics(result["workdir"])
    assert {(r["step"], r["split"]) for r in records} == {
        (0, "val"),
        (1, "train"),
        (2, "train"),
        (2, "val"),
        (2, "val_multi_view"),
    }
    train = [r for r in records if r["split"] == "train"]
    assert all(np.isfinite(r["loss"]) and r["clips_per_s"] > 0 for r in train)
    # Curves of loss and val accuracy; no attention figure (its maps are over image pixels).
    assert os.path.getsize(result["curves"]) > 0 and result["attention"] is None
    # Checkpoints are ranked by val accuracy, stored with the evaluated (final) step.
    with open(os.path.join(result["workdir"], "checkpoints", "2", "metrics", "metrics")) as f:
        assert json.load(f) == {"val_accuracy": val["accuracy"]}


def test_pmap_equals_jit_on_video(reference, prepared, tmp_path):
    jit = reference[0]["state"]
    pmap = train_and_evaluate(video_config(prepared, parallelism="pmap"), str(tmp_path))["state"]
    assert int(pmap.step) == 2
    chex.assert_trees_all_close(jit.params, pmap.params, rtol=2e-5, atol=1e-6)
    chex.assert_trees_all_close(jit.batch_stats, pmap.batch_stats, rtol=2e-5, atol=1e-6)
    # The parameters moved between steps 1 and 2: the comparison is not of two initialisations.
    step1 = load_variables(os.path.join(reference[0]["workdir"], "checkpoints", "1"))
    assert not np.allclose(step1["params"]["fc"]["kernel"], jit.params["fc"]["kernel"])


def test_interrupted_video_run_resumes_to_the_uninterrupted_result(reference, prepared, tmp_path):
    def sigterm_at_step_1(step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train_and_evaluate(video_config(prepared), str(tmp_path), on_step=sigterm_at_step_1)
    assert (first["status"], first["step"]) == ("preempted", 1)
    resumed = train_and_evaluate(video_config(prepared), str(tmp_path))
    assert (resumed["status"], resumed["step"]) == ("completed", 2)
    chex.assert_trees_all_equal(resumed["state"], reference[0]["state"])
    assert resumed["val"] == reference[0]["val"]


@pytest.fixture(scope="module")
def prepared_ucf101(tmp_path_factory):
    """A UCF101-layout fixture (official class index and train / test lists) of the same videos:
    the training videos in trainlist01, the val videos in testlist01."""
    root = tmp_path_factory.mktemp("ucf101")
    lists, classes = root / "raw" / "ucfTrainTestlist", sorted({c for c, _ in VIDEOS["train"]})
    os.makedirs(lists)
    (lists / "classInd.txt").write_text(
        "".join(f"{k + 1} {name}\n" for k, name in enumerate(classes))
    )
    listed = {}
    for split, videos in VIDEOS.items():
        for i, (name, colour) in enumerate(videos):
            relative = f"{name}/v_{name}_g{i + 1:02d}_c0{1 + (split == 'val')}.avi"
            write_video(root / "raw" / "UCF-101" / relative, colour, frames=8, height=32, width=40)
            label = f" {classes.index(name) + 1}" if split == "train" else ""
            listed.setdefault(split, []).append(relative + label)
    (lists / "trainlist01.txt").write_text("\n".join(listed["train"]) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(listed["val"]) + "\n")
    prepare("ucf101", str(root / "raw"), str(root / "out"), short_side=32, log=lambda _: 0)
    return str(root / "out")


def test_ucf101_trains_and_validates_on_its_test_list(prepared_ucf101, tmp_path):
    config = video_config(prepared_ucf101, **{"data.name": "ucf101"})
    result = train_and_evaluate(config, str(tmp_path))
    assert (result["status"], result["step"]) == ("completed", 2)
    assert result["val"]["count"] == len(VIDEOS["val"])  # the official test list is the val
    assert 0 <= result["val"]["accuracy"] <= 1


def test_cli_trains_the_kinetics_recipe_for_one_step(prepared, tmp_path):
    name = "kinetics_dnl_i3d_r50_32x2.py"
    overrides = [
        f"--config.data.data_dir={prepared}",
        "--config.model.name=dnl_i3d_tiny",
        "--config.data.num_classes=2",
        "--config.data.video.clip_len=4",
        "--config.data.video.frame_stride=1",
        "--config.data.video.crop_size=(32,32)",
        "--config.data.video.short_side_range=(32,36)",
        "--config.batch_size=4",
        "--config.evals.val.batch_size=4",
        "--config.total_steps=1",
        "--config.evals.val_multi_view.num_clips=1",
        "--config.evals.val_multi_view.num_crops=1",
        "--config.evals.val_multi_view.short_side=0",
        "--config.evals.val.short_side=0",
        "--config.progress_bar=False",
        "--config.model.pretrained=",
        "--config.model.from_scratch=True",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", **CACHE_ENV)
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.train",
        "--config",
        os.path.join(REPO, "experiments", "configs", name),
        "--workdir",
        str(tmp_path),
        *overrides,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed at step 1: val top-1 accuracy (1 clip per video)" in done.stdout
    assert "multi-view: clip accuracy" in done.stdout
    assert os.path.isdir(tmp_path / "checkpoints" / "1" / "state")
    assert os.path.exists(tmp_path / "curves.png")
