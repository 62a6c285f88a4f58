"""Convert a downloaded ImageNet backbone (PyTorch) into what the trainer loads.

    python -m dnl_jax.cli.pretrained NAME DOWNLOADED_FILE [--pretrained_dir pretrained]

NAME is a key of `dnl_jax.train.initialisation.BACKBONES` (`resnet50_v1c`, `resnet101_v1c`,
`torchvision_resnet50`, `deepbase_resnet101`); each names its published file and URL. Writes
`PRETRAINED_DIR/NAME/state` (orbax `{'params', 'batch_stats'}` of the 2-D backbone) and
`PRETRAINED_DIR/NAME/pretrained.json` (source, layout, depth, tensor count). The conversion is
strict: every tensor of the trunk must match the backbone in name and shape (the ImageNet
classifier `fc.*` is dropped), so a file of another depth or layout fails with one report.
Recipes then only need `--config.model.pretrained=NAME` (their default) and, if the folder is
elsewhere, `--config.model.pretrained_dir=...`.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from dnl_jax.interop.checkpoint_io import load_torch_checkpoint
from dnl_jax.interop.segmentor import CLASSIFIER_PREFIXES, resnet_depth, resnet_v1c_to_flax
from dnl_jax.interop.torchvision import torchvision_resnet_to_flax
from dnl_jax.train.initialisation import PretrainedBackbone

# The official DNL code's deep-stem ResNet (torchcv `deepbase_resnet*`, an nn.Sequential called
# `prefix`, which its loader also accepts without the prefix) → mmcv ResNetV1c's `stem.N`.
DEEPBASE_STEM = {
    "conv1": "stem.0",
    "bn1": "stem.1",
    "conv2": "stem.3",
    "bn2": "stem.4",
    "conv3": "stem.6",
    "bn3": "stem.7",
}


def deepbase_to_v1c_keys(state_dict: dict) -> dict:
    """torchcv deep-base keys (`[prefix.]conv1.weight`, `[prefix.]bn3.running_var`, `layer*`)
    → mmcv ResNetV1c keys (`stem.0.weight`, `stem.7.running_var`, `layer*` unchanged)."""
    renamed = {}
    for key, value in state_dict.items():
        bare = key[len("prefix.") :] if key.startswith("prefix.") else key
        module, _, leaf = bare.partition(".")
        renamed[f"{DEEPBASE_STEM[module]}.{leaf}" if module in DEEPBASE_STEM else bare] = value
    return renamed


def backbone_variables(spec: PretrainedBackbone, state_dict: dict) -> tuple[dict, int]:
    """The backbone's `{'params', 'batch_stats'}` and the number of tensors loaded (strict)."""
    if spec.layout == "torchvision":
        _, variables, report = torchvision_resnet_to_flax(state_dict, spec.depth)
    else:
        if spec.layout == "deepbase":
            state_dict = deepbase_to_v1c_keys(state_dict)
        trunk = {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIXES)}
        found = resnet_depth(trunk)
        if found != spec.depth:
            raise ValueError(
                f"{spec.name} is a ResNet-{spec.depth}, but the file's blocks per "
                f"stage are those of ResNet-{found}; is it the right file?"
            )
        _, variables, report = resnet_v1c_to_flax(state_dict)
    return variables, len(report.loaded)


def convert_backbone(spec: PretrainedBackbone, in_path: str, pretrained_dir: str) -> dict:
    """Converts `in_path` as backbone `spec` into `pretrained_dir/spec.name`; returns the
    summary written to `pretrained.json`."""
    out_dir = os.path.abspath(os.path.join(pretrained_dir, spec.name))
    state_dir = os.path.join(out_dir, "state")
    if os.path.exists(state_dir):
        raise ValueError(f"{state_dir} already exists; delete it to convert again.")
    variables, loaded = backbone_variables(spec, load_torch_checkpoint(in_path))
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    os.makedirs(out_dir, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(state_dir, jax.tree.map(np.asarray, variables))
    checkpointer.wait_until_finished()
    summary = dict(
        name=spec.name,
        source=os.path.abspath(in_path),
        published=spec.url,
        layout=spec.layout,
        depth=spec.depth,
        loaded=loaded,
    )
    with open(os.path.join(out_dir, "pretrained.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    return summary


def main(argv=None) -> int:
    """Deprecated (one release, CHANGELOG.md): the command is `dnl_jax.cli.pretrained.main`."""
    import importlib

    return importlib.import_module("dnl_jax.cli.pretrained").main(argv)


# The old command path, python -m dnl_jax.interop.pretrained:
if __name__ == "__main__":
    import runpy

    runpy.run_module("dnl_jax.cli.pretrained", run_name="__main__", alter_sys=True)
