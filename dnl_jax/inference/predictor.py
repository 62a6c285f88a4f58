"""`Predictor`: a checkpoint (or an exported model) applied to the user's images.

    predictor = Predictor.from_checkpoint('runs/demo/checkpoints/1000')
    result = predictor.predict('photo.png')          # or a uint8 [H, W, 3] array
    result.labels                                    # int32 [H, W] class indices
    maps = predictor.explain('photo.png', queries=[(12, 30)])

Segmentation follows the evaluator's path exactly (evaluators/segmentation.py): the image resized
by the record's policy (mmseg's keep-ratio test resize, or none), normalised by the record's mean
and std, inferred whole or by sliding windows (`segmentation_inference.predict_scores`), the
scores resized back to the image's size before the argmax.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.data import transforms
from dnl_jax.evaluators.segmentation_inference import MODES, predict_scores
from dnl_jax.inference import detection, export, files, video
from dnl_jax.inference import explain as explain_lib
from dnl_jax.inference import model as model_lib
from dnl_jax.inference.record import PreprocessingRecord, find_record
from dnl_jax.train.checkpoint_paths import step_directory


@dataclasses.dataclass
class SegmentationResult:
    """labels int32 `[H, W]` (class indices at the image's size), scores float32 `[H, W, K]`
    (logits; mean probabilities for several views), image uint8 `[H, W, 3]` (the input)."""

    labels: np.ndarray
    scores: np.ndarray
    image: np.ndarray


class Predictor:
    """Inference with a preprocessing record (module docstring).

    Args:
      record: the checkpoint's `PreprocessingRecord`.
      logits_fn: float32 inputs `[B, h, w, 3]` → logits `[B, h', w', K]` (None for a
        detector, which `detect` runs).
      module, variables: the Flax model and its weights (None for an exported model: no
        explanations then).
      input_size: (h, w) the model only takes (an exported model), or None for any size.
    """

    def __init__(
        self,
        record: PreprocessingRecord,
        logits_fn: Callable | None,
        *,
        module=None,
        variables: dict | None = None,
        input_size: tuple[int, int] | None = None,
    ):
        self.record, self.logits_fn = record, logits_fn
        self.module, self.variables, self.input_size = module, variables, input_size
        self._detect_fn = self._classify_fn = None

    @classmethod
    def from_checkpoint(cls, path: str, *, record: PreprocessingRecord | None = None) -> Predictor:
        """A checkpoint step directory (or `checkpoints/`: its latest step, or a converter's
        OUT_DIR); its record is found next to it (`record.find_record`) unless given."""
        step_dir = step_directory(path)
        record = record or find_record(step_dir)
        module = model_lib.build_module(record)
        variables = model_lib.load_checked(step_dir, module, record)
        if record.task in ("detection", "video"):  # `detect` / `classify` run them
            return cls(record, None, module=module, variables=variables)
        apply = jax.jit(lambda v, x: module.apply(v, x, train=False)["logits"].astype(jnp.float32))
        return cls(record, lambda x: apply(variables, x), module=module, variables=variables)

    @classmethod
    def from_exported(cls, path: str) -> Predictor:
        """A `python -m dnl_jax.export` artifact (no Flax model is built)."""
        return export.load_predictor(path, cls)

    # ------------------------------------------------------------------------- preprocessing
    def load(self, image, notes: list[str] | None = None) -> np.ndarray:
        """uint8 RGB `[H, W, 3]` of a path or an array (uint8, or float in [0, 255])."""
        if isinstance(image, (str, os.PathLike)):
            return files.read_image(os.fspath(image), notes)
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f"an image is [H, W, 3] RGB; got an array of shape {array.shape}.")
        return np.clip(array[..., :3], 0, 255).astype(np.uint8)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 `[H, W, 3]` → float32 model input `[h, w, 3]` (resized by the record's
        policy, normalised). ValueError when it is smaller than the model's output stride."""
        resize = self.record.resize
        if resize["policy"] == "keep_ratio":
            image, _ = transforms.resize_keep_ratio(image, None, resize["base_size"])
        elif resize["policy"] == "fixed":
            image, _ = transforms.resize(image, None, tuple(resize["size"]))
        stride = self.record.output_stride
        if min(image.shape[:2]) < stride:
            raise ValueError(
                f"the image is {image.shape[1]}x{image.shape[0]} pixels (after the record's "
                f"resize), smaller than the model's output stride {stride}; give an image of "
                f"at least {stride}x{stride} pixels."
            )
        return self.record.normalise(image)

    def _inference(self, mode, crop_size, stride) -> dict:
        settings = dict(self.record.inference)
        settings["mode"] = mode or settings.get("mode", "whole")
        if settings["mode"] not in MODES:
            raise ValueError(f"--mode {settings['mode']!r}; choose one of {MODES}.")
        settings["crop_size"] = tuple(crop_size or settings.get("crop_size") or ()) or None
        settings["stride"] = tuple(stride or settings.get("stride") or ()) or None
        if self.input_size is not None and settings["mode"] == "slide":
            settings["crop_size"] = self.input_size  # the windows the exported model takes
        if settings["mode"] == "slide" and not (settings["crop_size"] and settings["stride"]):
            raise ValueError(
                "--mode slide needs window sizes; pass --crop_size H,W and --stride H,W "
                "(this checkpoint's record has none)."
            )
        return settings

    # ---------------------------------------------------------------------------- inference
    def predict(
        self,
        image,
        *,
        mode: str | None = None,
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        notes: list[str] | None = None,
    ) -> SegmentationResult:
        """Labels and scores of one image (a path or an array); `mode` 'whole' | 'slide'
        overrides the record's test mode (slide windows `crop_size` every `stride`)."""
        return self.predict_batch(
            [image], mode=mode, crop_size=crop_size, stride=stride, notes=notes
        )[0]

    def predict_batch(self, images: Sequence, **options) -> list[SegmentationResult]:
        """`predict` of several images; those of one size go through the model together."""
        notes = options.pop("notes", None)
        if self.record.task != "segmentation":
            raise ValueError(
                f"this checkpoint is a {self.record.task} model; image segmentation needs a "
                "segmentation checkpoint."
            )
        settings = self._inference(
            options.get("mode"), options.get("crop_size"), options.get("stride")
        )
        loaded = [self.load(image, notes) for image in images]
        inputs = [self.preprocess(image) for image in loaded]
        results: list[SegmentationResult | None] = [None] * len(loaded)
        by_shape: dict[tuple, list[int]] = {}
        for index, (image, x) in enumerate(zip(loaded, inputs, strict=True)):
            by_shape.setdefault((image.shape, x.shape), []).append(index)
        for (image_shape, _), indices in by_shape.items():
            scores = self._scores(np.stack([inputs[i] for i in indices]), image_shape[:2], settings)
            for row, index in enumerate(indices):
                labels = np.argmax(scores[row], axis=-1).astype(np.int32)
                results[index] = SegmentationResult(labels, scores[row], loaded[index])
        return results  # type: ignore[return-value]

    def _scores(self, inputs: np.ndarray, output_size, settings: dict) -> np.ndarray:
        if self.logits_fn is None:
            raise ValueError(f"a {self.record.task} model gives no per-pixel scores.")
        fixed, size = self.input_size, tuple(inputs.shape[1:3])
        if fixed and settings["mode"] == "slide" and (size[0] < fixed[0] or size[1] < fixed[1]):
            raise ValueError(
                f"the exported model takes {fixed[1]}x{fixed[0]} windows, larger than this "
                f"{size[1]}x{size[0]} input; use --mode whole at that size or export again "
                "with a smaller --input_size H,W."
            )
        if fixed and settings["mode"] == "whole" and size != tuple(fixed):
            raise ValueError(
                f"the exported model takes {fixed[1]}x{fixed[0]} inputs, this one is "
                f"{inputs.shape[2]}x{inputs.shape[1]}; use --mode slide or export again with "
                "--input_size H,W."
            )
        scores = predict_scores(self.logits_fn, inputs, output_size=output_size, **settings)
        if not np.all(np.isfinite(scores)):
            raise FloatingPointError("the model gave non-finite scores for this image.")
        return scores

    def detect(self, image, *, score_threshold: float | None = None, notes=None):
        """Detections of one image (a path or an array) with a score of at least
        `score_threshold` (default: the record's): `detection.DetectionResult`."""
        if self.record.task != "detection":
            raise ValueError(f"this checkpoint is a {self.record.task} model, not a detector.")
        if self._detect_fn is None:
            self._detect_fn = detection.make_detect_fn(self.module, self.variables)
        threshold = self.record.inference.get("score_threshold", 0.3)
        threshold = threshold if score_threshold is None else score_threshold
        return detection.detect(
            self._detect_fn, self.record, self.load(image, notes), score_threshold=threshold
        )

    def classify(self, path: str, *, top_k: int = 5) -> video.VideoResult:
        """The top-k classes of a video file (`video.VideoResult`)."""
        if self.record.task != "video":
            raise ValueError(f"this checkpoint is a {self.record.task} model, not a video one.")
        if self._classify_fn is None:
            self._classify_fn = video.make_classify_fn(self.module, self.variables)
        return video.classify(self._classify_fn, self.record, path, top_k=top_k)

    def explain(self, image, queries: Sequence[tuple[int, int]] | None = None, block=None):
        """The attention maps of the model's non-local blocks on one image
        (`explain.Explanation`); `queries` (x, y) pixels of the image (default: one per
        predicted class, the centre of its largest region); `block` a block's path."""
        if self.module is None:
            raise ValueError("an exported model has no blocks to explain; use --checkpoint.")
        if self.record.task == "video":  # `image` is a video file: its middle clip
            clip, frames = video.clip_view(self.record, os.fspath(image))
            return explain_lib.explain_clip(
                self.module, self.variables, clip, frames, queries=queries, block=block
            )
        if self.record.task == "detection":  # the backbone's blocks on the detector's canvas
            example = detection.model_input(self.record, self.load(image))
            shown = detection.canvas_display(self.record, example)
            return explain_lib.explain_detector(
                self.module, self.variables, example, shown, queries=queries, block=block
            )
        image = self.load(image)
        result = self.predict(image, mode="whole")
        return explain_lib.explain(
            self.module,
            self.variables,
            self.preprocess(image),
            result,
            queries=queries,
            block=block,
        )


__all__ = ["Predictor", "SegmentationResult"]
