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
from collections.abc import Mapping
from typing import Any

from dnl_jax import IGNORE_LABEL
from dnl_jax.data import pipeline
from dnl_jax.models import losses, segmentor
from dnl_jax.tasks import segmentation_inputs as inputs
from dnl_jax.tasks.base import EvalInputs, InputsByDataset, ModelBundle, require

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


class Segmentation(InputsByDataset):
    """Per-pixel classification (module docstring)."""

    name = "segmentation"
    input_key = "image"
    example_model = "dnl_r50-d8"
    model_defaults = MODEL_DEFAULTS
    drawn_inputs, dataset_inputs = inputs.DRAWN, inputs.IMAGES

    def config_sections(self) -> dict[str, dict]:
        return {"synthetic": SYNTHETIC_SECTION, "segmentation": SECTION}

    def eval_inputs(self, data) -> EvalInputs:
        implementation, dataset = self._inputs(data)
        return implementation.eval_inputs(data, dataset, task=self.name)

    def build_bundle(self, name: str, num_classes: int, settings: Mapping[str, Any]) -> ModelBundle:
        head_kwargs = _dnl_head_kwargs(settings)
        ohem = losses.check_ohem(settings["ohem"])
        require(
            isinstance(settings["aux_weight"], (int, float)) and settings["aux_weight"] >= 0,
            f"aux_weight must be a number >= 0; got {settings['aux_weight']!r}.",
        )
        require(
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
            preprocess=self._inputs(data)[0].figure_preprocess(data),
        )

    def analysis_examples(self, config, split: str, num_images: int) -> list[dict]:
        implementation, dataset = self._inputs(config.data)
        source = implementation.analysis_source(config.data, dataset, split)
        return pipeline.first_examples(
            source, num_images, implementation.figure_preprocess(config.data)
        )


TASK = Segmentation()

__all__ = [
    "TASK",
    "Segmentation",
    "MODEL_DEFAULTS",
    "SECTION",
    "SYNTHETIC_SECTION",
]
