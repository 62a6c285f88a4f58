"""The real OpenMMLab reference classes, loaded file by file from the installed wheels.

mmsegmentation, mmaction2 and mmdet are installed with `--no-deps` (Makefile,
requirements-openmmlab.txt): their package `__init__`s import half of OpenMMLab (mmdet, mmcv's
compiled ops, ...), which is not installed here. Their model files themselves need only torch,
mmcv-lite and mmengine, plus a registry to decorate the classes. So each file is executed on its
own, under its real module name, with small stand-ins for the few package modules it imports:

- `<pkg>.registry.MODELS`: `register_module()` is a no-op decorator; `build(cfg)` (only reached
  for a head's loss) returns a parameter-free `nn.Identity`, so the state_dict keys are mmaction's.
- type aliases (`ConfigType`, `SampleList`, ...) and training-only helpers (`build_loss`,
  `build_pixel_sampler`, `top_k_accuracy`) that the forward pass never calls: they raise if called.

Everything numerical (convs, norms, `NonLocal3d`, residual layers, heads) is the wheel's own code.
A missing wheel fails the tests (everywhere: `make install` installs the wheels with torch, so
the parity tests never skip silently); only a missing torch skips them locally, as elsewhere.

    mmseg = mmseg_models()        # .ResNetV1c, .DisentangledNonLocal2d, .FCNHead, .DNLHead, .NLHead
    mmaction = mmaction_models()  # .ResNet3d, .I3DHead
    mmdet = mmdet_models()        # .ResNet, .FPN, .RPNHead, .ConvFCBBoxHead, .FCNMaskHead

mmdet 3.3.0's files import more of mmdet (structures, task modules, `mmcv.ops`, whose compiled
ops mmcv-lite lacks) for training and post-processing only; those names are stand-ins that raise
if called, and a few `__init__`-time builds get stand-ins with the real behaviour (see
`mmdet_models`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import types
from typing import Any

from torch_reference import require

torch = require("torch")


class _Registry:
    """Stands in for an mmengine `Registry`: decorating registers nothing."""

    def register_module(self, *args, **kwargs):
        del args, kwargs
        return lambda cls: cls

    def build(self, cfg):
        del cfg  # Only a head's loss is built this way; it has no parameters or buffers.
        return torch.nn.Identity()


def _not_for_inference(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"{name} is a stand-in: the parity tests never train.")

    return fail


def package_root(package: str) -> str:
    """The installed package's directory, without importing (executing) its `__init__`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the {package} wheel is not installed; `make install` installs it "
            "(pip install --no-deps -r requirements-openmmlab.txt)."
        )
    return list(spec.submodule_search_locations)[0]


def _stub(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # A package, so relative imports below it resolve.
    module.__dict__.update(attributes)
    return module


def _stand_ins(package: str, modules: dict[str, dict[str, Any]]) -> dict[str, types.ModuleType]:
    """The package root, its `registry` (MODELS) and `modules` ({'utils': {name: value}}) as
    stand-in modules, by qualified name."""
    stubs = {
        package: _stub(package),
        f"{package}.registry": _stub(f"{package}.registry", MODELS=_Registry()),
    }
    for name, attributes in modules.items():
        stubs[f"{package}.{name}"] = _stub(f"{package}.{name}", **attributes)
    return stubs


@contextlib.contextmanager
def _in_sys_modules(modules: dict[str, types.ModuleType]):
    """Puts `modules` into sys.modules for the duration, then restores what was there, so the
    stand-ins never leak into other tests (the loaded classes keep their own globals)."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _execute(root: str, qualified_name: str, modules: dict[str, types.ModuleType]):
    """Runs `root/<qualified_name minus the package>.py` as module `qualified_name`."""
    relative = qualified_name.split(".", 1)[1].replace(".", os.sep) + ".py"
    spec = importlib.util.spec_from_file_location(qualified_name, os.path.join(root, relative))
    module = importlib.util.module_from_spec(spec)
    with _in_sys_modules({**modules, qualified_name: module}):
        spec.loader.exec_module(module)
    return module


def _load_chain(package: str, stubs: dict[str, types.ModuleType], files: list[tuple[str, str]]):
    """Executes `files` ([(qualified name, parent package to expose it in)]) in order; each file
    becomes importable from its parent (as `from ..utils import ResLayer`) for the later ones."""
    root = package_root(package)
    modules = dict(stubs)
    for parent in {name.rsplit(".", 1)[0] for name, _ in files} | {
        name.rsplit(".", 2)[0] for name, _ in files
    }:
        modules.setdefault(parent, _stub(parent))
    loaded = {}
    for qualified_name, expose_in in files:
        module = _execute(root, qualified_name, modules)
        modules[qualified_name] = loaded[qualified_name] = module
        if expose_in:
            parent = modules.setdefault(expose_in, _stub(expose_in))
            parent.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    return loaded


@functools.cache
def mmseg_models() -> types.SimpleNamespace:
    """mmsegmentation 1.2.2's `ResNet` (V1b) and `ResNetV1c` (backbones/resnet.py with
    utils/res_layer.py), `DisentangledNonLocal2d` and `DNLHead` (decode_heads/dnl_head.py),
    `NLHead`, `GCHead`, `FCNHead` and their base `BaseDecodeHead` (decode_head.py; build it with
    `loss_decode=[]`)."""
    stubs = _stand_ins(
        "mmseg",
        {
            "utils": dict(ConfigType=dict, OptConfigType=dict, SampleList=list, OptSampleList=list),
            "structures": dict(build_pixel_sampler=_not_for_inference("build_pixel_sampler")),
            "models.builder": dict(build_loss=_not_for_inference("build_loss")),
        },
    )
    loaded = _load_chain(
        "mmseg",
        stubs,
        [
            ("mmseg.models.utils.res_layer", "mmseg.models.utils"),
            ("mmseg.models.utils.wrappers", "mmseg.models.utils"),
            ("mmseg.models.losses.accuracy", "mmseg.models.losses"),
            ("mmseg.models.backbones.resnet", None),
            ("mmseg.models.decode_heads.decode_head", None),
            ("mmseg.models.decode_heads.fcn_head", None),
            ("mmseg.models.decode_heads.nl_head", None),
            ("mmseg.models.decode_heads.dnl_head", None),
            ("mmseg.models.decode_heads.gc_head", None),
        ],
    )
    heads = "mmseg.models.decode_heads."
    return types.SimpleNamespace(
        ResNet=loaded["mmseg.models.backbones.resnet"].ResNet,
        ResNetV1c=loaded["mmseg.models.backbones.resnet"].ResNetV1c,
        FCNHead=loaded[heads + "fcn_head"].FCNHead,
        NLHead=loaded[heads + "nl_head"].NLHead,
        DNLHead=loaded[heads + "dnl_head"].DNLHead,
        GCHead=loaded[heads + "gc_head"].GCHead,
        DisentangledNonLocal2d=loaded[heads + "dnl_head"].DisentangledNonLocal2d,
    )


@functools.cache
def mmaction_models() -> types.SimpleNamespace:
    """mmaction2 1.2.0's `ResNet3d` (backbones/resnet3d.py, with mmcv's `NonLocal3d`) and
    `I3DHead` (heads/i3d_head.py on heads/base.py)."""
    stubs = _stand_ins(
        "mmaction",
        {
            "utils": dict(ConfigType=dict, ForwardResults=Any, SampleList=list, OptConfigType=dict),
            "evaluation": dict(top_k_accuracy=_not_for_inference("top_k_accuracy")),
        },
    )
    loaded = _load_chain(
        "mmaction",
        stubs,
        [
            ("mmaction.models.backbones.resnet3d", None),
            ("mmaction.models.heads.base", None),
            ("mmaction.models.heads.i3d_head", None),
        ],
    )
    return types.SimpleNamespace(
        ResNet3d=loaded["mmaction.models.backbones.resnet3d"].ResNet3d,
        I3DHead=loaded["mmaction.models.heads.i3d_head"].I3DHead,
    )


class _MMDetModels(_Registry):
    """mmdet's MODELS for the heads' `__init__`: a 'Linear' predictor (fc_cls / fc_reg) is a
    torch `nn.Linear` (mmcv registers its `Linear` wrapper, the same layer for non-empty
    inputs); a loss is a parameter-free `nn.Identity`, as for the other wheels."""

    def build(self, cfg):
        cfg = dict(cfg)
        if cfg.pop("type") == "Linear":
            return torch.nn.Linear(**cfg)
        return torch.nn.Identity()


class _MMDetTaskUtils(_Registry):
    """mmdet's TASK_UTILS for the heads' `__init__`: the anchor generator only reports its number
    of base anchors per level (scales × ratios, as `AnchorGenerator.num_base_priors`), the box
    coder its code size (4, `DeltaXYWHBBoxCoder.encode_size`)."""

    def build(self, cfg, default_args=None):
        del default_args
        if cfg["type"] == "AnchorGenerator":
            count = len(cfg.get("scales", cfg.get("octave_base_scale", ()))) * len(cfg["ratios"])
            return types.SimpleNamespace(num_base_priors=[count] * len(cfg["strides"]))
        if cfg["type"] == "DeltaXYWHBBoxCoder":
            return types.SimpleNamespace(encode_size=4)
        raise NotImplementedError(f"no stand-in for TASK_UTILS type {cfg['type']!r}.")


def _not_for_inference_names(*names: str) -> dict[str, Any]:
    return {name: _not_for_inference(name) for name in names}


@functools.cache
def mmdet_models() -> types.SimpleNamespace:
    """mmdet 3.3.0's `ResNet` (backbones/resnet.py with layers/res_layer.py, mmcv's plug-in
    builder), `FPN` (necks/fpn.py), `RPNHead` (dense_heads/rpn_head.py on the real
    anchor_head.py; its `BaseDenseHead` base is mmengine's `BaseModule`: the base only adds
    post-processing), `ConvFCBBoxHead` / `Shared2FCBBoxHead` / `Shared4Conv1FCBBoxHead`
    (roi_heads/bbox_heads/convfc_bbox_head.py on bbox_head.py) and `FCNMaskHead`
    (roi_heads/mask_heads/fcn_mask_head.py)."""
    from mmengine.model import BaseModule  # pylint: disable=import-outside-toplevel

    stubs = _stand_ins(
        "mmdet",
        {
            "utils": dict(
                ConfigType=dict,
                OptConfigType=dict,
                MultiConfig=dict,
                OptMultiConfig=dict,
                InstanceList=list,
                OptInstanceList=list,
            ),
            "structures": dict(SampleList=list),
            "structures.bbox": _not_for_inference_names(
                "cat_boxes",
                "empty_box_as",
                "get_box_tensor",
                "get_box_wh",
                "scale_boxes",
                "BaseBoxes",
            ),
            "structures.mask": _not_for_inference_names("mask_target"),
            "models.layers": _not_for_inference_names("multiclass_nms"),
            "models.losses": _not_for_inference_names("accuracy"),
            "models.utils": _not_for_inference_names(
                "empty_instances", "multi_apply", "images_to_levels", "unmap"
            ),
            "models.task_modules.samplers": dict(
                SamplingResult=object, PseudoSampler=_not_for_inference("PseudoSampler")
            ),
            "models.task_modules.prior_generators": dict(
                AnchorGenerator=object, **_not_for_inference_names("anchor_inside_flags")
            ),
            "models.dense_heads.base_dense_head": dict(BaseDenseHead=BaseModule),
        },
    )
    stubs["mmdet.registry"].MODELS = _MMDetModels()
    stubs["mmdet.registry"].TASK_UTILS = _MMDetTaskUtils()
    ops = _stub("mmcv.ops", **_not_for_inference_names("batched_nms"))
    stubs.update({"mmcv.ops": ops, "mmcv.ops.carafe": _stub("mmcv.ops.carafe", CARAFEPack=object)})
    loaded = _load_chain(
        "mmdet",
        stubs,
        [
            ("mmdet.models.layers.res_layer", "mmdet.models.layers"),
            ("mmdet.models.backbones.resnet", None),
            ("mmdet.models.necks.fpn", None),
            ("mmdet.models.dense_heads.anchor_head", "mmdet.models.dense_heads"),
            ("mmdet.models.dense_heads.rpn_head", None),
            ("mmdet.models.roi_heads.bbox_heads.bbox_head", "mmdet.models.roi_heads.bbox_heads"),
            ("mmdet.models.roi_heads.bbox_heads.convfc_bbox_head", None),
            ("mmdet.models.roi_heads.mask_heads.fcn_mask_head", None),
        ],
    )
    convfc = loaded["mmdet.models.roi_heads.bbox_heads.convfc_bbox_head"]
    return types.SimpleNamespace(
        ResNet=loaded["mmdet.models.backbones.resnet"].ResNet,
        FPN=loaded["mmdet.models.necks.fpn"].FPN,
        RPNHead=loaded["mmdet.models.dense_heads.rpn_head"].RPNHead,
        ConvFCBBoxHead=convfc.ConvFCBBoxHead,
        Shared2FCBBoxHead=convfc.Shared2FCBBoxHead,
        Shared4Conv1FCBBoxHead=convfc.Shared4Conv1FCBBoxHead,
        FCNMaskHead=loaded["mmdet.models.roi_heads.mask_heads.fcn_mask_head"].FCNMaskHead,
    )


# --- mmseg models as its configs build them (norm_cfg BN: SyncBN is BN on one process) ---------

BN = dict(type="BN", requires_grad=True)
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101}


def mmseg_resnet_v1c(stage_blocks, bottleneck, *, stem=64, base=64):
    """mmseg's own `ResNetV1c` D8 (strides 1, 2, 1, 1; dilations 1, 1, 2, 4), all 4 stages out."""
    return mmseg_models().ResNetV1c(
        depth=_DEPTHS[(tuple(stage_blocks), bottleneck)],
        stem_channels=stem,
        base_channels=base,
        strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        contract_dilation=True,
        norm_cfg=BN,
        out_indices=(0, 1, 2, 3),
    )


def mmseg_head(
    in_channels, channels, num_classes, *, context=None, num_convs=2, concat_input=True, in_index=-1
):
    """mmseg's `DNLHead` / `NLHead` / `GCHead` (`context` 'dnl' / 'nl' / 'gc', with their config
    defaults) or `FCNHead`; dropout 0.1 (identity in eval), no loss modules (`loss_decode=[]`)."""
    models = mmseg_models()
    common = dict(
        in_channels=in_channels,
        channels=channels,
        num_classes=num_classes,
        dropout_ratio=0.1,
        norm_cfg=BN,
        loss_decode=[],
        in_index=in_index,
    )
    if context == "dnl":
        return models.DNLHead(
            reduction=2, use_scale=True, mode="embedded_gaussian", temperature=0.05, **common
        )
    if context == "nl":
        return models.NLHead(reduction=2, use_scale=True, mode="embedded_gaussian", **common)
    if context == "gc":
        return models.GCHead(
            ratio=1 / 4, pooling_type="att", fusion_types=("channel_add",), **common
        )
    return models.FCNHead(num_convs=num_convs, concat_input=concat_input, **common)


def mmseg_dnl_block(channels):
    """mmseg's `DisentangledNonLocal2d` as `DNLHead` builds it (BN after conv_out)."""
    return mmseg_models().DisentangledNonLocal2d(
        in_channels=channels,
        reduction=2,
        use_scale=True,
        norm_cfg=BN,
        mode="embedded_gaussian",
        temperature=0.05,
    )
