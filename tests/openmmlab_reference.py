"""The real OpenMMLab reference classes, loaded file by file from the installed wheels.

mmsegmentation and mmaction2 are installed with `--no-deps` (Makefile, requirements-openmmlab.txt):
their package `__init__`s import half of OpenMMLab (mmdet, mmcv's compiled ops, ...), which is not
installed here. Their model files themselves need only torch, mmcv-lite and mmengine, plus a
registry to decorate the classes. So each file is executed on its own, under its real module
name, with small stand-ins for the few package modules it imports:

- `<pkg>.registry.MODELS`: `register_module()` is a no-op decorator; `build(cfg)` (only reached
  for a head's loss) returns a parameter-free `nn.Identity`, so the state_dict keys are mmaction's.
- type aliases (`ConfigType`, `SampleList`, ...) and training-only helpers (`build_loss`,
  `build_pixel_sampler`, `top_k_accuracy`) that the forward pass never calls: they raise if called.

Everything numerical (convs, norms, `NonLocal3d`, residual layers, heads) is the wheel's own code.
A missing wheel fails the tests (everywhere: `make install` installs the wheels with torch, so
the parity tests never skip silently); only a missing torch skips them locally, as elsewhere.

    mmseg = mmseg_models()        # .ResNetV1c, .DisentangledNonLocal2d, .FCNHead, .DNLHead, .NLHead
    mmaction = mmaction_models()  # .ResNet3d, .I3DHead
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
        raise ImportError(f"the {package} wheel is not installed; `make install` installs it "
                          "(pip install --no-deps -r requirements-openmmlab.txt).")
    return list(spec.submodule_search_locations)[0]


def _stub(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # A package, so relative imports below it resolve.
    module.__dict__.update(attributes)
    return module


def _stand_ins(package: str, modules: dict[str, dict[str, Any]]) -> dict[str, types.ModuleType]:
    """The package root, its `registry` (MODELS) and `modules` ({'utils': {name: value}}) as
    stand-in modules, by qualified name."""
    stubs = {package: _stub(package),
             f"{package}.registry": _stub(f"{package}.registry", MODELS=_Registry())}
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
            name.rsplit(".", 2)[0] for name, _ in files}:
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
    stubs = _stand_ins("mmseg", {
        "utils": dict(ConfigType=dict, OptConfigType=dict, SampleList=list, OptSampleList=list),
        "structures": dict(build_pixel_sampler=_not_for_inference("build_pixel_sampler")),
        "models.builder": dict(build_loss=_not_for_inference("build_loss")),
    })
    loaded = _load_chain("mmseg", stubs, [
        ("mmseg.models.utils.res_layer", "mmseg.models.utils"),
        ("mmseg.models.utils.wrappers", "mmseg.models.utils"),
        ("mmseg.models.losses.accuracy", "mmseg.models.losses"),
        ("mmseg.models.backbones.resnet", None),
        ("mmseg.models.decode_heads.decode_head", None),
        ("mmseg.models.decode_heads.fcn_head", None),
        ("mmseg.models.decode_heads.nl_head", None),
        ("mmseg.models.decode_heads.dnl_head", None),
        ("mmseg.models.decode_heads.gc_head", None),
    ])
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
    stubs = _stand_ins("mmaction", {
        "utils": dict(ConfigType=dict, ForwardResults=Any, SampleList=list, OptConfigType=dict),
        "evaluation": dict(top_k_accuracy=_not_for_inference("top_k_accuracy")),
    })
    loaded = _load_chain("mmaction", stubs, [
        ("mmaction.models.backbones.resnet3d", None),
        ("mmaction.models.heads.base", None),
        ("mmaction.models.heads.i3d_head", None),
    ])
    return types.SimpleNamespace(
        ResNet3d=loaded["mmaction.models.backbones.resnet3d"].ResNet3d,
        I3DHead=loaded["mmaction.models.heads.i3d_head"].I3DHead,
    )


# --- mmseg models as its configs build them (norm_cfg BN: SyncBN is BN on one process) ---------

BN = dict(type="BN", requires_grad=True)
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101}


def mmseg_resnet_v1c(stage_blocks, bottleneck, *, stem=64, base=64):
    """mmseg's own `ResNetV1c` D8 (strides 1, 2, 1, 1; dilations 1, 1, 2, 4), all 4 stages out."""
    return mmseg_models().ResNetV1c(
        depth=_DEPTHS[(tuple(stage_blocks), bottleneck)], stem_channels=stem, base_channels=base,
        strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True, norm_cfg=BN,
        out_indices=(0, 1, 2, 3))


def mmseg_head(in_channels, channels, num_classes, *, context=None, num_convs=2,
               concat_input=True, in_index=-1):
    """mmseg's `DNLHead` / `NLHead` / `GCHead` (`context` 'dnl' / 'nl' / 'gc', with their config
    defaults) or `FCNHead`; dropout 0.1 (identity in eval), no loss modules (`loss_decode=[]`)."""
    models = mmseg_models()
    common = dict(in_channels=in_channels, channels=channels, num_classes=num_classes,
                  dropout_ratio=0.1, norm_cfg=BN, loss_decode=[], in_index=in_index)
    if context == "dnl":
        return models.DNLHead(reduction=2, use_scale=True, mode="embedded_gaussian",
                              temperature=0.05, **common)
    if context == "nl":
        return models.NLHead(reduction=2, use_scale=True, mode="embedded_gaussian", **common)
    if context == "gc":
        return models.GCHead(ratio=1 / 4, pooling_type="att", fusion_types=("channel_add",),
                             **common)
    return models.FCNHead(num_convs=num_convs, concat_input=concat_input, **common)


def mmseg_dnl_block(channels):
    """mmseg's `DisentangledNonLocal2d` as `DNLHead` builds it (BN after conv_out)."""
    return mmseg_models().DisentangledNonLocal2d(
        in_channels=channels, reduction=2, use_scale=True, norm_cfg=BN, mode="embedded_gaussian",
        temperature=0.05)
