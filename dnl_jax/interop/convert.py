"""Convert a PyTorch (mmseg / open-mmlab) checkpoint into an orbax checkpoint of dnl_jax variables.

    python -m dnl_jax.cli.convert IN.pth OUT_DIR --model dnl_r50-d8 [--partial]

Writes `OUT_DIR/state` (an orbax `StandardCheckpointer` PyTree `{'params', 'batch_stats'}`, what
the trainer's `--config.init_from=OUT_DIR` and the evaluator load) and `OUT_DIR/conversion.json`
(model, classes, and the key report). `--model` is a registry name (`dnl_jax.models.MODEL_NAMES`)
or `auto` (architecture read from the checkpoint's keys). The number of classes comes from the
checkpoint's `decode_head.conv_seg` unless `--num-classes` is given.

An mmaction2 `Recognizer3D` checkpoint (I3D/C2D `ResNet3d` + `I3DHead`, keys `backbone.conv1.conv`,
`cls_head.fc_cls`) converts into a `VideoClassifier` (`dnl_jax.interop.mmaction`): `--model auto`
reads the architecture from its keys and uses mmaction2's time strides ('mmaction' layout);
`--nl-mode dot_product` for its dot-product NL checkpoints (the keys are the same). A registry
video model (e.g. `nl_i3d_r50`) is built with `layout='mmaction'` and loads strictly by name.

An mmdet Mask R-CNN R-FPN checkpoint (keys `neck.lateral_convs.*` and `roi_head.bbox_head.*`
for mmdet v2/v3, or `bbox_head.*` for mmdetection v1 such as the official DNL detection
checkpoints; the layout is detected) converts into a `MaskRCNN` (`dnl_jax.interop.mmdet`):
`--model auto` reads the architecture, context blocks included, from its keys.

A whole mmseg segmentor converts strictly: any missing, unexpected or mis-shaped key fails with
one report. `--partial` loads what matches and keeps a fresh initialisation elsewhere: for an
ImageNet-pretrained `resnet*_v1c` backbone (keys `stem.*`, `layer*`; loaded under `backbone`)
or a checkpoint with another number of classes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dnl_jax import tasks
from dnl_jax.inference.record import record_for_conversion, write_record
from dnl_jax.interop import mapping, mmaction, mmdet, segmentor
from dnl_jax.interop.checkpoint_io import load_torch_checkpoint, to_numpy


def _num_classes(state_dict: dict, given: int | None) -> int:
    if given is not None:
        return given
    key = "decode_head.conv_seg.weight"
    if key not in state_dict:
        raise ValueError(
            f"the checkpoint has no {key!r} to read the number of classes from; "
            "pass --num-classes K."
        )
    return int(to_numpy(state_dict[key]).shape[0])


def _as_segmentor_keys(state_dict: dict) -> dict:
    """A bare ResNetV1c backbone (`stem.*`, `layer*`, `fc.*`) goes under `backbone.`."""
    if any(key.startswith("backbone.") for key in state_dict):
        return state_dict
    if "stem.0.weight" in state_dict:
        return {
            f"backbone.{key}": value
            for key, value in state_dict.items()
            if not key.startswith(segmentor.CLASSIFIER_PREFIXES)
        }
    raise ValueError(
        "the checkpoint is neither an mmseg segmentor (backbone.*) nor a ResNetV1c "
        f"backbone (stem.*); first keys: {sorted(state_dict)[:6]}."
    )


def build_module(state_dict: dict, model: str, num_classes: int | None, output_stride: int) -> Any:
    if model == "auto":
        return segmentor.segmentor_for_state_dict(state_dict, output_stride=output_stride)
    bundle = tasks.get_model(
        model, _num_classes(state_dict, num_classes), output_stride=output_stride
    )
    if bundle.task != "segmentation":
        raise ValueError(
            f"--model {model!r} is a {bundle.task} model; only segmentation models "
            "convert from mmseg checkpoints."
        )
    return bundle.module


def _detector_module(state_dict: dict, model: str, num_classes: int | None) -> Any:
    """The `MaskRCNN` an mmdet checkpoint converts into: from its keys, or a registry model."""
    if model == "auto":
        return mmdet.detector_for_state_dict(state_dict)
    classes = num_classes or mmdet.detector_config(state_dict)["num_classes"]
    bundle = tasks.get_model(model, classes)
    if bundle.task != "detection":
        raise ValueError(
            f"--model {model!r} is a {bundle.task} model; an mmdet Mask R-CNN "
            "converts into a detection model or --model auto."
        )
    return bundle.module


def _target(
    state_dict: dict,
    model: str,
    num_classes: int | None,
    output_stride: int,
    nl_mode: str,
    abn: bool | None = None,
) -> tuple[dict, Any, dict, mapping.Rename]:
    """(state_dict with segmentor keys, module, variable template, key rename) for the source."""
    if mmdet.is_mmdet_detector(state_dict):
        module = _detector_module(state_dict, model, num_classes)
        layout = mmdet.detect_layout(state_dict)
        return (
            mmdet.prepared_state_dict(state_dict, layout, module, abn=abn),
            module,
            mmdet.detector_template(module),
            mmdet.mmdet_rename(layout),
        )
    if mmaction.is_mmaction_recognizer(state_dict):
        module = mmaction.video_module(state_dict, model, num_classes, nl_mode=nl_mode)
        return state_dict, module, mmaction.video_template(module), mmaction.mmaction_rename
    state_dict = _as_segmentor_keys(state_dict)
    module = build_module(state_dict, model, num_classes, output_stride)
    return state_dict, module, segmentor.segmentor_template(module), segmentor.mmseg_rename


def convert(
    in_path: str,
    out_dir: str,
    *,
    model: str = "auto",
    num_classes: int | None = None,
    output_stride: int = 8,
    partial: bool = False,
    seed: int = 0,
    nl_mode: str = "embedded_gaussian",
    abn: bool | None = None,
) -> dict:
    """Converts `in_path` for `model` and writes `out_dir/state`; returns the summary dict.
    `abn`: mmdet checkpoints only, whether their batch norms are In-Place ABN (None: inferred,
    see `mmdet.abn_norm_layers`)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "state")):
        raise ValueError(f"{out_dir}/state already exists; choose a new OUT_DIR or delete it.")
    state_dict, module, template, rename = _target(
        load_torch_checkpoint(in_path), model, num_classes, output_stride, nl_mode, abn
    )
    loaded, report = mapping.torch_to_flax(
        state_dict,
        template,
        rename=rename,
        strict=not partial,
        what=f"{in_path} for --model {model}",
    )
    variables = loaded
    video_layout = mmaction.layout_summary(module)  # None for a segmentor or a detector.
    detector = mmdet.is_detector_module(module)
    if partial:
        _check_something_matched(report, in_path, model)
        if video_layout:
            fresh = mmaction.fresh_video_variables(module, seed)
        elif detector:
            fresh = mmdet.fresh_detector_variables(module, seed)
        else:
            fresh = _fresh_variables(module, seed)
        variables = mapping.merge_variables(fresh, loaded)
    os.makedirs(out_dir, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(out_dir, "state"), jax.tree.map(np.asarray, variables))
    checkpointer.wait_until_finished()
    mismatched = [
        dict(key=key, checkpoint=list(got), model=list(want))
        for key, got, want, _ in report.mismatched
    ]
    summary = dict(
        source=os.path.abspath(in_path),
        model=model,
        num_classes=int(
            module.num_classes if video_layout or detector else module.decode_head.num_classes
        ),
        video_layout=video_layout,
        partial=partial,
        loaded=len(report.loaded),
        model_tensors=len(report.loaded) + len(report.missing) + len(report.mismatched),
        missing=[key for key, _ in report.missing],
        unexpected=list(report.unexpected),
        mismatched=mismatched,
    )
    with open(os.path.join(out_dir, "conversion.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    if not (video_layout or detector):  # what predict needs (dnl_jax/inference/record.py)
        architecture = None
        if model == "auto":
            architecture = dict(segmentor.segmentor_config(state_dict), output_stride=output_stride)
        write_record(out_dir, record_for_conversion(summary, architecture, output_stride))
    return summary


def _check_something_matched(report: mapping.ConversionReport, in_path: str, model: str) -> None:
    """--partial keeps a fresh initialisation where nothing matched: refuse when that is all."""
    if report.loaded:
        return
    unmatched = len(report.unexpected) + len(report.mismatched)
    raise ValueError(
        f"--partial matched 0 tensors of {in_path} to --model {model} ({unmatched} checkpoint "
        f"tensors unmatched: {len(report.unexpected)} unexpected, {len(report.mismatched)} "
        "mis-shaped); check that the checkpoint and --model are the same architecture."
    )


def _fresh_variables(module: Any, seed: int) -> dict:
    """The module's own initialisation (train=True so the auxiliary head is created)."""
    images = np.zeros((1, 64, 64, module.backbone.in_channels), np.float32)
    keys = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
    init = jax.jit(lambda rngs, x: module.init(rngs, x, train=True))
    return jax.tree.map(np.asarray, mapping.plain_dict(init(keys, images)))


def main(argv=None) -> int:
    """Deprecated (one release, CHANGELOG.md): the command is `dnl_jax.cli.convert.main`."""
    import importlib

    return importlib.import_module("dnl_jax.cli.convert").main(argv)


# The old command path, python -m dnl_jax.interop.convert:
if __name__ == "__main__":
    import runpy

    runpy.run_module("dnl_jax.cli.convert", run_name="__main__", alter_sys=True)
