"""ImageNet-pretrained backbones: which published file each recipe starts from, the check that
its converted copy is there before anything is built, and loading it into the model.

A recipe names its initialisation with `config.model.pretrained` (a key of `BACKBONES`). The
downloaded PyTorch file is converted once into `config.model.pretrained_dir/NAME/`:

    python -m dnl_jax.cli.pretrained NAME DOWNLOADED_FILE [--pretrained_dir pretrained]

which holds `state` (an orbax PyTree `{'params', 'batch_stats'}` of the 2-D backbone, in the
names of `dnl_jax.models.resnet.ResNetV1c` / `resnet_v1b.ResNetV1b`) and `pretrained.json`.
At the start of training the backbone leaves of the fresh model are replaced by it
(`load_into`); a 3-D video backbone gets each 2-D kernel inflated in time (repeated kt times
and divided by kt, as I3D and mmaction2 do). Leaves only the model has (the context blocks
inside a video backbone) keep their fresh initialisation.

Real datasets never train from scratch by accident: an empty `config.model.pretrained` is
refused unless `config.model.from_scratch=True` says so (`check_initialisation`). A run with
`config.init_from` (a whole converted model, e.g. an mmseg checkpoint) needs neither.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
from flax import traverse_util

from dnl_jax.tasks import SYNTHETIC_DATASETS

log = logging.getLogger(__name__)

BACKBONE_SCOPE = "backbone"  # where both the segmentor and the video classifier keep it
CONTEXT_BLOCK_SUFFIX = "_block"  # modules (nl_block, dnl_block, ...) that ImageNet lacks
LAYOUTS = ("open-mmlab", "torchvision", "deepbase")


@dataclasses.dataclass(frozen=True)
class PretrainedBackbone:
    """A published ImageNet checkpoint and how to read it.

    Attributes:
      name: the catalogue key, also the converted directory's name.
      file: the published file name.
      url: where it is published.
      layout: 'open-mmlab' (mmcv ResNetV1c: `stem.{0,1,3,4,6,7}`, `layer*`), 'torchvision'
        (7×7 `conv1`, `bn1`, `layer*`) or 'deepbase' (the official DNL code's torchcv ResNet:
        `[prefix.]conv{1,2,3}`, `[prefix.]bn{1,2,3}` deep stem of 64, 64, 128 channels).
      depth: ResNet depth the file must have.
      used_by: who starts from it (for the error message and the README).
    """

    name: str
    file: str
    url: str
    layout: str
    depth: int
    used_by: str


BACKBONES = {
    spec.name: spec
    for spec in (
        PretrainedBackbone(
            "resnet50_v1c",
            "resnet50_v1c-2cccc1ad.pth",
            "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
            "open-mmlab",
            50,
            "mmseg R50-D8 recipes (open-mmlab://resnet50_v1c)",
        ),
        PretrainedBackbone(
            "resnet101_v1c",
            "resnet101_v1c-e67eebb6.pth",
            "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
            "open-mmlab",
            101,
            "mmseg R101-D8 recipes (open-mmlab://resnet101_v1c)",
        ),
        PretrainedBackbone(
            "torchvision_resnet50",
            "resnet50-0676ba61.pth",
            "https://download.pytorch.org/models/resnet50-0676ba61.pth",
            "torchvision",
            50,
            "video recipes (mmaction2's torchvision://resnet50)",
        ),
        PretrainedBackbone(
            "deepbase_resnet101",
            "3x3resnet101-imagenet.pth",
            "https://drive.google.com/open?id=1bUzCKazlh8ElGVYWlABBAb0b0uIqFgtR (the DNL "
            "code's README, yinmh17/DNL-Semantic-Segmentation)",
            "deepbase",
            101,
            "the official DNL code's recipes (deepbase_resnet101_dilated8)",
        ),
    )
}


def convert_command(name: str, pretrained_dir: str, source_file: str = "") -> str:
    """The shell command that converts the downloaded file of backbone `name`."""
    source = source_file or BACKBONES[name].file
    return f"python -m dnl_jax.cli.pretrained {name} {source} --pretrained_dir {pretrained_dir}"


def converted_dir(model_config: Any) -> str:
    """`pretrained_dir/NAME`, where the converted backbone of `config.model` lives."""
    return os.path.join(model_config.pretrained_dir, model_config.pretrained)


def check_initialisation(config: Any) -> None:
    """Refuses a run whose initialisation is not stated or not there.

    Raises ValueError when: both `model.pretrained` and `model.from_scratch` are set; a real
    dataset would train from scratch without `model.from_scratch=True`; the name is not in
    `BACKBONES`; or its converted directory is missing (the message names the file, where it is
    published and the command that converts it).
    """
    model = config.model
    if config.init_from:  # a whole converted model replaces every initialisation
        return
    if model.pretrained and model.from_scratch:
        raise ValueError(
            f"config.model.pretrained={model.pretrained!r} and "
            "config.model.from_scratch=True contradict each other; set one."
        )
    if not model.pretrained:
        if config.data.name not in SYNTHETIC_DATASETS and not model.from_scratch:
            raise ValueError(
                f"config.model.pretrained is empty: this {config.data.name} run would train "
                f"from scratch. Name a backbone ({', '.join(sorted(BACKBONES))}) or set "
                "--config.model.from_scratch=True to start from random weights on purpose."
            )
        return
    if model.pretrained not in BACKBONES:
        raise ValueError(
            f"config.model.pretrained={model.pretrained!r} is not a known "
            f"backbone; choose one of {sorted(BACKBONES)}."
        )
    state = os.path.join(converted_dir(model), "state")
    if not os.path.isdir(state):
        spec = BACKBONES[model.pretrained]
        raise ValueError(
            f"pretrained backbone {spec.name!r} not found at {state}. Download {spec.file} "
            f"from {spec.url}, then convert it: "
            f"{convert_command(spec.name, model.pretrained_dir)}"
        )


def inflate(kernel: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A 2-D kernel `[kh, kw, I, O]` as the 3-D `shape` `[kt, kh, kw, I, O]`: repeated kt times
    in time and divided by kt, so a clip of identical frames gives the 2-D response."""
    kernel = np.asarray(kernel)
    if tuple(shape[1:]) != kernel.shape:
        raise ValueError(f"cannot inflate a {kernel.shape} kernel to {tuple(shape)}.")
    return np.repeat(kernel[None], shape[0], axis=0) / shape[0]


def _merge(collection: str, model_tree: Any, loaded_tree: Any, source: str) -> tuple[Any, int]:
    """`model_tree` with its backbone leaves replaced by `loaded_tree`'s; (tree, #replaced)."""
    flat = traverse_util.flatten_dict(dict(model_tree))
    loaded = traverse_util.flatten_dict(dict(loaded_tree))
    for path, value in loaded.items():
        target = (BACKBONE_SCOPE, *path)
        if target not in flat:
            raise ValueError(
                f"{source}: {collection} {'/'.join(path)} has no counterpart in the "
                "model's backbone; was it converted for another depth or stem?"
            )
        want = tuple(np.shape(flat[target]))
        value = np.asarray(value)
        if value.shape != want:
            if len(want) != value.ndim + 1:
                raise ValueError(
                    f"{source}: {collection} {'/'.join(path)} has shape "
                    f"{value.shape}; the model's backbone has {want}."
                )
            value = inflate(value, want)
        flat[target] = value.astype(np.asarray(flat[target]).dtype)
    fresh = [
        path
        for path in flat
        if path[0] == BACKBONE_SCOPE and path[1:] not in loaded and not _in_context_block(path)
    ]
    if fresh:
        raise ValueError(
            f"{source} lacks {len(fresh)} {collection} leaves of the model's "
            f"backbone, e.g. {'/'.join(fresh[0])}; convert the right backbone."
        )
    return traverse_util.unflatten_dict(flat), len(loaded)


def _in_context_block(path: tuple[str, ...]) -> bool:
    return any(name.endswith(CONTEXT_BLOCK_SUFFIX) for name in path)


def load_into(model_config: Any, params: Any, batch_stats: Any, load_variables) -> tuple:
    """(params, batch_stats) with the backbone taken from the converted `model.pretrained`.

    Args:
      model_config: `config.model` (pretrained, pretrained_dir).
      params, batch_stats: the fresh model's variables (host numpy trees).
      load_variables: `path → {'params', 'batch_stats'}` (`dnl_jax.train.checkpoint`).
    Raises ValueError when a leaf of the file has no place in the model, a shape neither
    matches nor inflates, or a backbone leaf outside the context blocks is not in the file.
    """
    source = converted_dir(model_config)
    variables = load_variables(source)
    params, count = _merge("params", params, variables["params"], source)
    batch_stats, stats = _merge("batch_stats", batch_stats, variables["batch_stats"], source)
    log.info(
        "initialised %d parameter and %d statistics arrays of the backbone from %s",
        count,
        stats,
        source,
    )
    return params, batch_stats


__all__ = [
    "BACKBONES",
    "LAYOUTS",
    "PretrainedBackbone",
    "check_initialisation",
    "convert_command",
    "converted_dir",
    "inflate",
    "load_into",
]
