"""predict with a video classifier runs end to end on a video file (the multi-view test of its
config: top-k classes with scores printed and written), and a video that cannot be decoded, an
empty one and an image given to a video model are one line each."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from data_fixtures import write_video
from PIL import Image
from train_testing import tiny_config

from dnl_jax import tasks
from dnl_jax.cli import predict as predict_cli
from dnl_jax.inference import Predictor, record_from_config, write_record
from dnl_jax.inference.model import build_module


def _record(config):
    """The record the trainer writes for `config` (its task resolved as `tasks.build` does)."""
    return record_from_config(config, tasks.for_dataset(config.data.name))


pytest.importorskip("av")


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory):
    config = tiny_config(
        **{
            "model.name": "dnl_i3d_tiny",
            "data.name": "kinetics",
            "data.num_classes": 5,
            "data.video.clip_len": 4,
            "data.video.frame_stride": 1,
            "data.video.crop_size": (32, 32),
        }
    )
    config.evals.test = dict(type="multi_view", num_clips=2, num_crops=3, short_side=0)
    record = _record(config)
    assert record.inference == {
        "clip_len": 4, "frame_stride": 1, "crop_size": 32,
        "num_clips": 2, "num_crops": 3, "short_side": 0,
    }  # fmt: skip
    module = build_module(record)
    clips = np.zeros((1, 4, 32, 32, 3), np.float32)
    variables = jax.jit(lambda: module.init(jax.random.key(0), clips, train=True))()
    directory = tmp_path_factory.mktemp("video") / "ckpt"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "state", jax.tree.map(np.asarray, variables))
    checkpointer.wait_until_finished()
    write_record(str(directory), record)
    return str(directory)


def test_video_top_k(video_checkpoint, tmp_path, capsys):
    write_video(tmp_path / "in" / "clip.mp4", (200, 40, 40), frames=10, height=40, width=56)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "--checkpoint", video_checkpoint, "--output_dir", str(out)]
    assert predict_cli.main([*args, "--top_k", "3", "--no_progress_bar"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("clip.mp4: class ") and "top-k JSON" in printed
    result = json.loads((out / "clip_topk.json").read_text())
    assert result["views"] == 6 and len(result["top"]) == 3  # 2 clips x 3 crops
    scores = [entry["score"] for entry in result["top"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    full = Predictor.from_checkpoint(video_checkpoint).classify(str(tmp_path / "in" / "clip.mp4"))
    np.testing.assert_allclose(full.scores.sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("broken.mp4", b"\x00\x01 not a video" * 8, "cannot be decoded as a video"),
        ("empty.avi", b"", "is empty (0 bytes)"),
        ("photo.png", None, "is not a video"),
    ],
)
def test_bad_video_inputs(video_checkpoint, tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (32, 32)).save(path)
    else:
        path.write_bytes(content)
    args = [str(path), "--checkpoint", video_checkpoint, "--output_dir", str(tmp_path / "o")]
    assert predict_cli.main([*args, "--no_progress_bar"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_video_explain_draws_the_clip_frames(video_checkpoint, tmp_path, capsys):
    """--explain on a video model: its 3-D blocks' maps over the middle clip (rows sum to 1),
    the query in the middle time slice, one figure row per key time slice."""
    write_video(tmp_path / "in" / "clip.mp4", (40, 200, 40), frames=10, height=40, width=56)
    path = str(tmp_path / "in" / "clip.mp4")
    explanation = Predictor.from_checkpoint(video_checkpoint).explain(path, queries=[(5, 30)])
    assert explanation.frames.shape == (4, 32, 32, 3) and explanation.labels is None
    assert explanation.blocks
    for maps in explanation.blocks:
        assert len(maps.grid) == 3
        np.testing.assert_allclose(maps.unary.sum(), 1.0, rtol=1e-5)
        np.testing.assert_allclose(maps.pairwise.sum(-1), 1.0, rtol=1e-5)
        t, h, w = maps.grid
        assert maps.query_cells[0] == (t // 2) * h * w + (30 * h // 32) * w + 5 * w // 32
    out = tmp_path / "out"
    args = [path, "--checkpoint", video_checkpoint, "--output_dir", str(out), "--explain"]
    assert predict_cli.main([*args, "--no_progress_bar"]) == 0
    stored = np.load(out / "clip_explain.npz")
    assert "labels" not in stored and stored["queries_xy"].tolist() == [[16, 16]]  # the centre
    figures = sorted(p.name for p in out.glob("clip_explain_*.png"))
    assert len(figures) == len(explanation.blocks)
