"""The video task (action recognition): prepared Kinetics-layout datasets (Kinetics, UCF101), the
ResNet-3D classifiers with non-local blocks (I3D / C2D), cross-entropy and top-1 accuracy.

Training clips: `clip_len` frames every `frame_stride`-th frame, short side rescaled to
U[`short_side_range`], a square crop of `crop_size`, horizontal flip
(`transforms.VideoTrainTransform`). Evaluation: one view per video ('batched': the middle clip,
centre crop) or the multi-view test ('multi_view', evaluators/video.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from dnl_jax.data import datasets, pipeline, transforms
from dnl_jax.models import losses, metrics
from dnl_jax.models.video import build_video_classifier
from dnl_jax.tasks.base import EvalInputs, ModelBundle, Task, require

# config.data.video: clips of clip_len frames every frame_stride-th frame, short side rescaled to
# U[short_side_range], a square crop of crop_size, horizontal flip.
SECTION = dict(clip_len=32, frame_stride=2, crop_size=(224, 224), short_side_range=(256, 320))

MODEL_DEFAULTS = dict(
    depth=50,
    base_channels=64,
    stem_channels=64,
    inflation="i3d",
    context="dnl",
    temporal_pool=True,
    dropout_rate=0.5,
    dtype=None,
    axis_name=None,
    implementation=None,
    frozen_bn=False,
    temperature=0.05,
    # mmaction2 checkpoints' architecture (models/video.py: VIDEO_LAYOUTS) and its NL blocks.
    layout="paper",
    nl_mode="embedded_gaussian",
    use_scale=None,
)


def crop_side(data) -> int:
    """The square crop's side (ValueError for a non-square `crop_size`)."""
    crop = tuple(data.video.crop_size)
    require(
        len(crop) == 2 and crop[0] == crop[1] and int(crop[0]) >= 1,
        f"config.data.video.crop_size={crop}: video crops are square, e.g. (224, 224).",
    )
    return int(crop[0])


def view_settings(data, *, num_clips: int, num_crops: int, short_side: int) -> dict:
    """`transforms.video_eval_views` kwargs from `config.data.video` (clip_len, frame_stride,
    the square crop_size) and the evaluator's views (short_side 0 = the crop side)."""
    return {
        "clip_len": int(data.video.clip_len),
        "stride": int(data.video.frame_stride),
        "crop_size": crop_side(data),
        "num_clips": int(num_clips),
        "num_crops": int(num_crops),
        "short_side": int(short_side) or None,
    }


def check_short_side(name: str, short_side: int, data) -> None:
    """short_side is 0 (the crop side) or at least the crop side."""
    crop = crop_side(data)
    if short_side and short_side < crop:
        raise ValueError(
            f"config.evals.{name}.short_side={short_side} must be 0 (the crop side) "
            f"or >= the crop side {crop}."
        )


def one_view_preprocess(data, short_side: int):
    """`example -> {'video': [T, c, c, 3] float32, 'label': int32}`: the middle clip, centre
    crop (`transforms.video_eval_views` with one clip and one crop)."""
    settings = view_settings(data, num_clips=1, num_crops=1, short_side=short_side)

    def one_view(example: dict) -> dict:
        views = transforms.video_eval_views(example, **settings)
        return {"video": views["video"][0], "label": np.int32(example["label"])}

    return one_view


def loss_ratios(outputs: Mapping, batch: Mapping) -> dict:
    """{'cross_entropy': (Σ CE, B), 'accuracy': (top-1 correct, B)} for `{'logits': [B, K]}`
    and `{'label': int [B]}`."""
    logits, labels = outputs["logits"], batch["label"]
    count = jnp.float32(labels.shape[0])
    correct = jnp.sum(jnp.argmax(logits, -1) == labels, dtype=jnp.float32)
    return {
        "cross_entropy": (-jnp.sum(losses.pixel_log_likelihood(logits, labels)), count),
        "accuracy": (correct, count),
    }


LOSS_WEIGHTS = {"cross_entropy": 1.0}
loss = losses.batch_loss_fn(loss_ratios, LOSS_WEIGHTS)


def metric_counts(outputs: Mapping, batch: Mapping) -> dict:
    """`{'correct': int32, 'count': int32}` (top-1)."""
    return losses.classification_counts(outputs["logits"], batch["label"])


class Video(Task):
    """Clip classification (module docstring)."""

    name = "video"
    input_key = "video"
    example_model = "dnl_i3d_r50"
    model_defaults = MODEL_DEFAULTS

    def config_sections(self) -> dict[str, dict]:
        return {"video": SECTION}

    def sections_read(self, data) -> tuple[str, ...]:
        return ("video",)

    def eval_inputs(self, data) -> EvalInputs:
        def settings(num_clips: int, num_crops: int, short_side: int) -> dict:
            return view_settings(
                data, num_clips=num_clips, num_crops=num_crops, short_side=short_side
            )

        return EvalInputs.of(
            "videos",
            self.name,
            data,
            label_check=self.label_check(data, "evaluation examples in a batch"),
            view_settings=settings,
            check_short_side=lambda name, short_side: check_short_side(name, short_side, data),
        )

    def check_data(self, config) -> None:
        section = config.data.video
        for key in ("clip_len", "frame_stride"):
            require(int(section[key]) >= 1, f"config.data.video.{key}={section[key]} must be >= 1.")
        crop = crop_side(config.data)
        low, high = tuple(section.short_side_range)
        require(
            crop <= low <= high,
            f"config.data.video.short_side_range={(low, high)} must be (low, high) with crop"
            f" side {crop} <= low <= high: frames are rescaled to it, then cropped.",
        )

    def sources(self, data):
        return datasets.get(data.name).sources(data)  # UCF101 validates on its test split

    def eval_source(self, data, split: str):
        return datasets.get(data.name).split(data, split, with_names=True)

    def example_shape(self, data) -> tuple[int, ...]:
        side = crop_side(data)
        return int(data.video.clip_len), side, side, 3

    def train_transform(self, data):
        section = data.video
        return transforms.VideoTrainTransform(
            clip_len=int(section.clip_len),
            stride=int(section.frame_stride),
            crop_size=crop_side(data),
            short_side_range=tuple(int(v) for v in section.short_side_range),
        )

    def build_bundle(self, name: str, num_classes: int, settings: Mapping[str, Any]) -> ModelBundle:
        module = build_video_classifier(num_classes=num_classes, **settings)
        return ModelBundle(
            module,
            self.name,
            num_classes,
            loss,
            metric_counts,
            name,
            "video",
            dict(settings),
            loss_ratios_fn=loss_ratios,
            loss_weights=LOSS_WEIGHTS,
            finalize_metrics=metrics.accuracy_from_counts,
            describe_metrics=metrics.describe_accuracy,
            best_metric="accuracy",
            metric_label="val top-1 accuracy (1 clip)",
            pad_label=-1,
            example_unit="clip",
        )

    def label_check(self, data, what: str) -> pipeline.ClassLabelCheck:
        """Class labels outside [0, num_classes) are refused, never clipped."""
        return pipeline.ClassLabelCheck(data.num_classes, what)

    def analysis_examples(self, config, split: str, num_images: int) -> list[dict]:
        preprocess = one_view_preprocess(config.data, config.evals.val.get("short_side", 0))
        return pipeline.first_examples(
            datasets.get(config.data.name).split(config.data, split), num_images, preprocess
        )


TASK = Video()

__all__ = [
    "TASK",
    "Video",
    "MODEL_DEFAULTS",
    "SECTION",
    "view_settings",
    "check_short_side",
    "one_view_preprocess",
    "loss_ratios",
    "loss",
    "metric_counts",
    "LOSS_WEIGHTS",
]
