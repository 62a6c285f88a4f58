"""The segmentation task: the synthetic scenes and the prepared datasets (Cityscapes, ADE20K,
Pascal Context), the segmentors (dilated ResNet-V1c + DNL / NL / GC / FCN decode head), their
pixel loss and mIoU, and the attention figure.

Training inputs: the synthetic scenes are drawn model-ready at `image_size`²; prepared images go
through mmseg's train pipeline (`transforms.SegmentationTrainTransform`: random resize of
`base_size` by a ratio in `ratio_range`, crop of `crop_size` with `cat_max_ratio`, flip,
photometric distortion). Evaluation: the synthetic val scenes in batches ('batched'), prepared
images one by one ('segmentation': whole / slide / multi-scale + flip).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from dnl_jax import IGNORE_LABEL
from dnl_jax.data import pipeline, submission, transforms
from dnl_jax.data.regions import RegionScenes
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.models import losses, segmentor
from dnl_jax.tasks.base import EvalInputs, ModelBundle, Task, drawn_image_shape

SYNTHETIC = ("synthetic",)
PREPARED = ("cityscapes", "ade20k", "pascal_context")  # python -m dnl_jax.data.prepare NAME
SCENES = {"beacon": SyntheticSegmentation, "regions": RegionScenes}  # data.synthetic.scenes

# config.data.synthetic: the drawn scenes (both tasks' synthetic datasets read it; `scenes` and
# `ignore_fraction` are the segmentation scenes' own): image side, scenes per split, noise, which
# scenes ('beacon': data/synthetic.py; 'regions': data/regions.py) and the fraction of each label
# map set to 255 (one random rectangle).
SYNTHETIC_SECTION = dict(
    image_size=32, num_train=2048, num_val=256, noise=0.1, scenes="beacon", ignore_fraction=0.0
)
SEGMENTATION_SCENE_KEYS = ("scenes", "ignore_fraction")
# config.data.segmentation: mmseg's train pipeline of the prepared datasets: random resize of
# base_size (long, short) by a ratio in ratio_range, crop of crop_size (h, w) with
# cat_max_ratio, flip, photometric distortion.
SECTION = dict(
    crop_size=(512, 512), base_size=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio=0.75
)

MODEL_DEFAULTS = dict(
    head="dnl",
    depth=50,
    base_channels=64,
    stem_channels=64,
    channels=512,
    aux_channels=256,
    output_stride=8,
    aux=True,
    dtype=None,
    axis_name=None,
    ignore_label=IGNORE_LABEL,
    aux_weight=0.4,
    ohem=None,
    class_weights=None,
    dropout_rate=0.1,
    implementation=None,
    frozen_bn=False,
    pairwise=True,
    unary=True,
    # 'kept' (the official code, and this codebase before the option existed) or 'all' (mmseg's
    # avg_non_ignore=False): see models/losses.py. align_corners: mmseg's heads' resize setting.
    loss_normalizer="kept",
    align_corners=False,
)
# The settings `build_segmentor` takes by name (the rest shape the loss and the head's terms).
_BUILDER_KEYS = tuple(inspect.signature(segmentor.build_segmentor).parameters)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _pair_ok(value) -> bool:
    return len(tuple(value)) == 2 and all(int(v) >= 1 for v in value)


def _dnl_head_kwargs(settings: Mapping) -> dict:
    """The DNL head's term switches (`pairwise`, `unary`), checked against the head."""
    terms = {key: settings[key] for key in ("pairwise", "unary")}
    for key, value in terms.items():
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False; got {value!r}.")
    if settings["head"] != "dnl":
        if not all(terms.values()):
            raise ValueError(
                f"pairwise/unary switch the terms of the 'dnl' head only; got {terms} with head="
                f"{settings['head']!r}. Use head='dnl' or leave both True."
            )
        return {}
    if not any(terms.values()):
        raise ValueError(
            "pairwise and unary are both False: the DNL block would compute nothing;"
            " use head='fcn' for no context block."
        )
    return terms


def figure_preprocess(data) -> Callable[[dict], dict] | None:
    """`example -> {'image': model input, 'label', 'display'}` for drawing the attention maps of
    a prepared dataset's raw val examples: resized to `base_size` (aspect kept, label by nearest
    neighbour) and normalised as in evaluation. None for the synthetic scenes, which are drawn
    already normalised."""
    if data.name in SYNTHETIC:
        return None
    base_size = tuple(data.segmentation.base_size)

    def preprocess(example: dict) -> dict:
        image, label = transforms.resize_keep_ratio(example["image"], example["label"], base_size)
        return {"image": transforms.normalize(image), "label": label, "display": image}

    return preprocess


class Segmentation(Task):
    """Per-pixel classification (module docstring)."""

    name = "segmentation"
    datasets = SYNTHETIC + PREPARED
    synthetic = SYNTHETIC
    input_key = "image"
    example_model = "dnl_r50-d8"
    model_defaults = MODEL_DEFAULTS

    def config_sections(self) -> dict[str, dict]:
        return {"synthetic": SYNTHETIC_SECTION, "segmentation": SECTION}

    def sections_read(self, data) -> tuple[str, ...]:
        return ("synthetic",) if data.name in SYNTHETIC else ("segmentation",)

    def eval_inputs(self, data) -> EvalInputs:
        # Synthetic scenes are model-ready at one size; prepared images have their own sizes.
        common = dict(task=self.name, dataset=data.name, num_classes=int(data.num_classes))
        if data.name in SYNTHETIC:
            return EvalInputs(
                kind="scenes",
                num_examples=int(data.synthetic.num_val),
                num_examples_key="config.data.synthetic.num_val",
                **common,
            )

        def write_prediction(prediction, name: str, output_dir: str) -> str:
            return submission.write_prediction_png(prediction, data.name, name, output_dir)

        return EvalInputs(
            kind="images",
            base_size=tuple(data.segmentation.base_size),
            write_prediction=write_prediction,
            **common,
        )

    def check_data(self, config) -> None:
        data = config.data
        if data.name in SYNTHETIC:
            scenes = data.synthetic
            _require(
                data.num_classes >= 5 and data.num_classes % 2 == 1,
                f"config.data.num_classes={data.num_classes}: the synthetic scenes need an "
                "odd number >= 5 (background, two beacon classes, two classes per colour), "
                "e.g. 7.",
            )
            _require(
                scenes.scenes in SCENES,
                f"config.data.synthetic.scenes={scenes.scenes!r}; choose one of {tuple(SCENES)}.",
            )
            _require(
                scenes.num_train >= config.batch_size,
                "config.data.synthetic.num_train must be >= batch_size.",
            )
            return
        section = data.segmentation
        for key in ("crop_size", "base_size"):
            _require(
                _pair_ok(section[key]),
                f"config.data.segmentation.{key}={tuple(section[key])} must be two positive sizes.",
            )
        low, high = section.ratio_range
        _require(
            0 < low <= high,
            f"config.data.segmentation.ratio_range="
            f"{tuple(section.ratio_range)} must be (low, high) with 0 < low <= high.",
        )
        _require(
            0 < section.cat_max_ratio <= 1,
            "config.data.segmentation.cat_max_ratio must be in (0, 1].",
        )

    def sources(self, data):
        if data.name not in SYNTHETIC:
            return pipeline.prepared_sources(data)
        drawn = data.synthetic
        common = dict(
            image_size=drawn.image_size,
            num_classes=data.num_classes,
            seed=data.seed,
            noise=drawn.noise,
            ignore_fraction=drawn.ignore_fraction,
        )
        scenes = SCENES[drawn.scenes]
        return (
            scenes(drawn.num_train, split="train", **common),
            scenes(drawn.num_val, split="val", **common),
        )

    def eval_source(self, data, split: str):
        if data.name in SYNTHETIC:
            return pipeline.synthetic_val(self.sources(data), split)
        return pipeline.prepared_split(data, split, with_names=True)

    def example_shape(self, data) -> tuple[int, ...]:
        if data.name in SYNTHETIC:
            return drawn_image_shape(data)
        return (*(int(v) for v in data.segmentation.crop_size), 3)

    def train_transform(self, data):
        if data.name in SYNTHETIC:
            return None  # drawn normalised at their final size, padded ground truth included
        section = data.segmentation
        return transforms.SegmentationTrainTransform(
            crop_size=tuple(section.crop_size),
            base_size=tuple(section.base_size),
            ratio_range=tuple(section.ratio_range),
            cat_max_ratio=float(section.cat_max_ratio),
        )

    def build_bundle(self, name: str, num_classes: int, settings: Mapping[str, Any]) -> ModelBundle:
        head_kwargs = _dnl_head_kwargs(settings)
        ohem = losses.check_ohem(settings["ohem"])
        _require(
            isinstance(settings["aux_weight"], (int, float)) and settings["aux_weight"] >= 0,
            f"aux_weight must be a number >= 0; got {settings['aux_weight']!r}.",
        )
        _require(
            isinstance(settings["align_corners"], bool),
            f"align_corners must be True or False; got {settings['align_corners']!r}.",
        )
        normalizer = losses.check_normalizer(settings["loss_normalizer"])
        class_weights = losses.check_class_weights(settings["class_weights"], num_classes)
        module = segmentor.build_segmentor(
            settings["depth"],
            settings["head"],
            num_classes,
            head_kwargs=head_kwargs,
            **{
                key: settings[key]
                for key in _BUILDER_KEYS
                if key in settings and key not in ("head", "num_classes")
            },
        )
        ignore = settings["ignore_label"]
        ratios_fn = functools.partial(
            segmentor.segmentation_loss_ratios,
            ignore_label=ignore,
            ohem=ohem,
            class_weights=class_weights,
            normalizer=normalizer,
        )
        weights = {"decode_loss": 1.0, "aux_loss": float(settings["aux_weight"])}
        selection_fn = None
        if ohem is not None and normalizer == "kept":  # the normaliser depends on the logits
            selection_fn = functools.partial(
                segmentor.ohem_selection, ohem=ohem, ignore_label=ignore
            )
        metrics_fn = functools.partial(
            segmentor.segmentation_confusion, num_classes=num_classes, ignore_label=ignore
        )
        return ModelBundle(
            module,
            self.name,
            num_classes,
            losses.batch_loss_fn(ratios_fn, weights),
            metrics_fn,
            name,
            "image",
            dict(settings, ohem=ohem, class_weights=class_weights),
            loss_ratios_fn=ratios_fn,
            loss_weights=weights,
            loss_selection_fn=selection_fn,
        )

    def save_figure(self, workdir, bundle, module, variables, source, data) -> str | None:
        """The attention figure ('attention.png'; None for models without a DNL block)."""
        from dnl_jax.analysis import viz  # imported lazily: matplotlib

        return viz.save_attention_figure(
            workdir,
            module,
            variables,
            source,
            num_classes=data.num_classes,
            preprocess=figure_preprocess(data),
        )

    def analysis_examples(self, config, split: str, num_images: int) -> list[dict]:
        data = config.data
        if data.name in SYNTHETIC:
            source = dict(zip(("train", "val"), self.sources(data), strict=False))[split]
        else:
            source = pipeline.prepared_split(data, split)
        return pipeline.first_examples(source, num_images, figure_preprocess(data))


TASK = Segmentation()

__all__ = [
    "TASK",
    "Segmentation",
    "MODEL_DEFAULTS",
    "SECTION",
    "SYNTHETIC_SECTION",
    "SYNTHETIC",
    "PREPARED",
    "figure_preprocess",
]
