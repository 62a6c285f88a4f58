"""Multi-view video evaluation (`type='multi_view'`), the non-local network's test protocol:
num_clips clips evenly spaced in time x num_crops crops along the longer side per video (short
side rescaled to short_side; 0 = the crop side); a view is correct when its argmax is the label,
a video when the argmax of its views' mean softmax is. Each host evaluates its share of the
videos on one device; the counts are summed over hosts.

    config.evals.val_multi_view = dict(type='multi_view', every_steps=0, num_clips=10,
                                       num_crops=3, short_side=256)

Clip length, frame stride and the square crop come from the task (`EvalInputs.view_settings`,
from config.data.video).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dnl_jax.core.ops import host_softmax
from dnl_jax.data import transforms
from dnl_jax.evaluators import common


def video_view_counts(
    predict_fn: common.PredictFn,
    examples: Iterable[dict],
    *,
    clip_len: int,
    stride: int,
    crop_size: int,
    num_clips: int = 10,
    num_crops: int = 3,
    short_side: int | None = None,
) -> np.ndarray:
    """int64 `[4]` = (correct views, views, correct videos, videos) for `predict_fn(videos
    [V,T,c,c,3]) -> logits [V,K]` on the num_clips x num_crops views of each example. Summable
    over hosts."""
    counts = np.zeros(4, np.int64)
    for example in examples:
        views = transforms.video_eval_views(
            example,
            clip_len=clip_len,
            stride=stride,
            crop_size=crop_size,
            num_clips=num_clips,
            num_crops=num_crops,
            short_side=short_side,
        )
        logits = np.asarray(predict_fn(views["video"]), np.float32)
        common.check_finite(np.sum(~np.isfinite(logits)), "logits")
        label = int(example["label"])
        counts += (
            int(np.sum(logits.argmax(-1) == label)),
            len(logits),
            int(host_softmax(logits).mean(0).argmax() == label),
            1,
        )
    return counts


def video_accuracies(counts: np.ndarray) -> dict[str, float]:
    """{'clip_accuracy': top-1 of single views, 'video_accuracy': top-1 of the views' averaged
    softmax} from `video_view_counts` (summed over hosts)."""
    clip_hits, clip_total, video_hits, video_total = (int(c) for c in counts)
    if video_total == 0:
        raise ValueError("evaluate_video: no examples.")
    return {"clip_accuracy": clip_hits / clip_total, "video_accuracy": video_hits / video_total}


def evaluate_video(
    predict_fn: common.PredictFn, examples: Iterable[dict], **settings
) -> dict[str, float]:
    """`video_accuracies` of `video_view_counts(predict_fn, examples, **settings)`."""
    return video_accuracies(video_view_counts(predict_fn, examples, **settings))


def check_views(name: str, settings: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """num_clips / num_crops >= 1 and short_side >= 0 among `keys` of `settings`."""
    for key in keys:
        low = 0 if key == "short_side" else 1
        if not isinstance(settings[key], int) or settings[key] < low:
            raise ValueError(
                f"config.evals.{name}.{key}={settings[key]!r} must be an integer >= {low}."
            )


class MultiViewEvaluator(common.Evaluator):
    """Multi-view video accuracy (module docstring): {'clip_accuracy', 'video_accuracy'}."""

    KEYS = {"every_steps": 0, "num_clips": 10, "num_crops": 3, "short_side": 0}
    INPUTS = ("videos",)

    @classmethod
    def check(
        cls, name: str, settings: Mapping[str, Any], inputs, *, num_devices: int, num_processes: int
    ) -> None:
        super().check(name, settings, inputs, num_devices=num_devices, num_processes=num_processes)
        check_views(name, settings, ("num_clips", "num_crops", "short_side"))
        inputs.check_short_side(name, settings["short_side"])

    def run(self, state) -> dict:
        s, context = self.settings, self.context
        settings = context.inputs.view_settings(s["num_clips"], s["num_crops"], s["short_side"])
        examples = common.host_examples(context.source, context.between_batches)
        counts = video_view_counts(self.predict_fn(state), examples, **settings)
        return video_accuracies(common.sum_over_hosts(counts))

    def describe(self, metrics) -> str:
        return (
            f"multi-view: clip accuracy {metrics['clip_accuracy']:.4f}, video accuracy "
            f"{metrics['video_accuracy']:.4f}"
        )
