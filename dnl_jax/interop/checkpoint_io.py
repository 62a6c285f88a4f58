"""Safe loading of PyTorch checkpoints into flat `{key: numpy array}` state_dicts.

Supported files:
- `.pth` / `.pt` / `.bin` / `.ckpt`: `torch.load(path, weights_only=True)`. PyTorch's restricted
  unpickler only rebuilds tensors and plain containers, so a file that tries to run code (a
  malicious `__reduce__`) is refused instead of executed. torch is imported only here.
- `.safetensors`: read with `safetensors.numpy`, which needs no torch and holds no code at all.

mmseg/mmcv checkpoints wrap the weights as `{'meta': ..., 'state_dict': ..., 'optimizer': ...}`;
the weights are unwrapped (also `'model'` and `'module.'` prefixes from DataParallel wrappers).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
# Keys under which training frameworks nest the weights (mmcv/mmseg, torchvision recipes, DDP).
WRAPPER_KEYS = ("state_dict", "model")


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device; bfloat16 becomes float32) or array-like → numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16.
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a PyTorch checkpoint file without executing pickled code.

    Args:
      path: a `.pth`, `.pt`, `.bin` or `.ckpt` file (`torch.save` output, possibly an mmseg
        checkpoint with `state_dict` and `meta`) or a `.safetensors` file.

    Returns:
      The parameters as numpy arrays by name, in PyTorch layout (conv weights OIHW).

    Raises:
      ValueError: missing file, unknown suffix, a pickle that is not plain weights (e.g. one that
        would run code), or content that is not a flat mapping of names to tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file not found: {path!r}. Check the path (and the mount).")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return unwrap_state_dict(_load_pickle(path), source=path)
    raise ValueError(
        f"unknown checkpoint format {suffix!r} for {path!r}; expected one of "
        f"{PICKLE_SUFFIXES + SAFETENSORS_SUFFIXES}. Rename the file if it is a torch.save file."
    )


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    try:
        return dict(load_file(path))
    except Exception as error:  # safetensors raises its own error types for corrupt headers.
        raise ValueError(f"{path!r} is not a readable safetensors file: {error}") from error


def _load_pickle(path: str) -> Any:
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ValueError(
            f"reading {path!r} needs PyTorch: install the extra with `pip install -e .[torch]`, "
            "or convert the file to .safetensors first."
        ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refused to load {path!r}: it holds pickled objects other than tensors and plain "
            "containers, which could run arbitrary code. Only weights-only checkpoints are "
            f"accepted; re-save the state_dict alone if you trust its origin. ({error})"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path!r} is not a readable torch.save file: {error}") from error


def unwrap_state_dict(content: Any, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Finds the weights in a loaded checkpoint and returns them as numpy arrays.

    Accepts a bare state_dict or one nested under `state_dict`/`model` (mmseg, torchvision
    recipes); strips a `module.` prefix shared by every key (DataParallel/DDP).
    """
    if not isinstance(content, Mapping):
        raise ValueError(
            f"{source}: expected a mapping of parameter names to tensors; got "
            f"{type(content).__name__}. Save `model.state_dict()`, not the model."
        )
    for key in WRAPPER_KEYS:
        if isinstance(content.get(key), Mapping):
            content = content[key]
            break
    state_dict = {}
    for name, value in content.items():
        if not (hasattr(value, "detach") or isinstance(value, np.ndarray)):
            raise ValueError(
                f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor; expected a "
                f"flat state_dict (top-level keys: {sorted(content)[:8]}...)."
            )
        state_dict[str(name)] = to_numpy(value)
    if state_dict and all(name.startswith("module.") for name in state_dict):
        state_dict = {name[len("module.") :]: value for name, value in state_dict.items()}
    return state_dict
