"""Video classification of the user's video files: the top-k classes with scores.

A file is decoded with PyAV (FFmpeg), its short side resized, and cut into the record's views as
the video evaluators do (`transforms.video_eval_views`: `num_clips` clips of `clip_len` frames
every `frame_stride`-th frame, evenly spaced in time, × `num_crops` square crops): the multi-view
test of the recipe when its config has one, else the middle clip's centre crop. The class scores
are the softmax probabilities averaged over the views.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.core.ops import host_softmax
from dnl_jax.data import transforms
from dnl_jax.inference import files

MAX_FRAMES = 100_000  # decode whole files (views pick their frames afterwards)


@dataclasses.dataclass
class VideoResult:
    """scores float32 `[K]` (mean probabilities over views), top: [(class index, score)],
    views: how many clips × crops were averaged."""

    scores: np.ndarray
    top: list[tuple[int, float]]
    views: int


def video_settings(config) -> dict:
    """The record's `inference` of a video config: clip_len, frame_stride, crop_size, and the
    views of its multi-view evaluator (else one clip, one crop), short side 0 = the crop."""
    data = config.data.video
    views = {"num_clips": 1, "num_crops": 1, "short_side": 0}
    for section in config.get("evals", {}).values():
        if section.get("type") == "multi_view":
            views = {key: int(section.get(key, views[key])) for key in views}
            break
    return {
        "clip_len": int(data.clip_len),
        "frame_stride": int(data.frame_stride),
        "crop_size": int(tuple(data.crop_size)[0]),
        **views,
    }


def read_video(path: str, short_side: int) -> np.ndarray:
    """uint8 `[T, H, W, 3]` frames of a video file, short side `short_side`. ValueError (one
    line) for an empty or undecodable file."""
    from dnl_jax.data.video import decode_video  # PyAV: imported only for videos

    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); give a video file.")
    try:
        frames = decode_video(path, short_side=short_side, max_frames=MAX_FRAMES)
    except ValueError:
        raise ValueError(
            f"{path} cannot be decoded as a video; give a file FFmpeg reads (.mp4, .avi, .webm, "
            ".mkv)."
        ) from None
    return np.stack(frames)


def make_classify_fn(module, variables):
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False)["logits"].astype(jnp.float32))
    return lambda clips: np.asarray(apply(variables, clips))


def _views(record, frames: np.ndarray, *, one: bool = False, mean=None, std=None):
    """The record's views `[V, T, c, c, 3]` of decoded frames (`one`: the middle clip's centre
    crop only), normalised by `mean` / `std` (default the record's)."""
    settings = record.inference
    crop = int(settings["crop_size"])
    return transforms.video_eval_views(
        {"video": frames, "label": -1},
        clip_len=int(settings["clip_len"]),
        stride=int(settings["frame_stride"]),
        crop_size=crop,
        num_clips=1 if one else int(settings["num_clips"]),
        num_crops=1 if one else int(settings["num_crops"]),
        short_side=int(settings["short_side"]) or None,
        mean=record.mean if mean is None else mean,
        std=record.std if std is None else std,
    )["video"]


def _decoded(record, path: str) -> np.ndarray:
    settings = record.inference
    return read_video(path, int(settings["short_side"]) or int(settings["crop_size"]))


def clip_view(record, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(model input float32 `[T, c, c, 3]`, the same frames uint8 for display) of the middle
    clip's centre crop of the video at `path` (what `--explain` draws)."""
    frames = _decoded(record, path)
    clip = _views(record, frames, one=True)[0]
    shown = _views(record, frames, one=True, mean=(0.0,) * 3, std=(1.0,) * 3)[0]
    return clip, np.clip(np.round(shown), 0, 255).astype(np.uint8)


def classify(classify_fn, record, path: str, *, top_k: int = 5) -> VideoResult:
    """`VideoResult` of the video file at `path`."""
    views = _views(record, _decoded(record, path))
    scores = host_softmax(classify_fn(views)).mean(axis=0)
    order = np.argsort(-scores)[:top_k]
    return VideoResult(scores, [(int(k), float(scores[k])) for k in order], len(views))


def write_video_result(result: VideoResult, stem: str, output_dir: str, record) -> list[str]:
    """NAME_topk.json: the top classes with names and scores."""
    payload = {
        "views": result.views,
        "top": [
            {"class": k, "name": record.class_names[k], "score": round(score, 6)}
            for k, score in result.top
        ],
    }
    path = os.path.join(output_dir, f"{stem}_topk.json")
    return [files.write_atomic(path, json.dumps(payload, indent=1).encode("utf-8"))]


def describe(result: VideoResult, record, name: str) -> str:
    """'NAME: class (0.91), class (0.05), ...' for the command's output."""
    top = ", ".join(f"{record.class_names[k]} ({score:.3f})" for k, score in result.top)
    return f"{name}: {top}"


__all__ = [
    "VideoResult",
    "video_settings",
    "read_video",
    "classify",
    "clip_view",
    "write_video_result",
]
