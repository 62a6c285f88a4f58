"""Name and layout mapping between PyTorch state_dicts and Flax variables, with strict reports.

The conversion is driven by a *template* of the Flax variables (shapes from `jax.eval_shape` of
the module's `init`): every Flax leaf names the PyTorch key it comes from, so a checkpoint that
lacks a key, has an extra one, or has a differently shaped tensor is reported by name.

Flax leaf → PyTorch key (module path joined by `.`, `name_N` → `name.N`, see `default_rename`;
or a model-specific `rename`):

    params/<path>/kernel        ↔ <path>.weight         conv [*window, I, O] ↔ [O, I, *window]
                                                        dense [I, O] ↔ [O, I]
    params/<path>/scale         ↔ <path>.weight         norms
    params/<path>/bias          ↔ <path>.bias
    batch_stats/<path>/mean     ↔ <path>.running_mean
    batch_stats/<path>/var      ↔ <path>.running_var
    params/<path>/gamma         ↔ <path>.gamma          (a bare parameter, e.g. official DNL's)
    (none)                      ↔ <path>.num_batches_tracked   (a counter; ignored on load)

mmcv's `ContextBlock` builds its LayerNorm as `LayerNorm([C, 1, 1])`, so the weight and bias of
`channel_{add,mul}_conv.1` are `[C, 1, 1]` in PyTorch and `[C]` here (`mmcv_torch_shape`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from dnl_jax.interop.checkpoint_io import to_numpy

# A model-specific map from a Flax module path (tuple of names) to the PyTorch module prefix.
Rename = Callable[[tuple[str, ...]], str]
# (Flax leaf path, Flax shape) → PyTorch shape of a non-kernel leaf (same elements, reshaped).
TorchShape = Callable[[tuple[str, ...], tuple[int, ...]], tuple[int, ...]]

LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("params", "gamma"): "gamma",  # the official DNL block's scalar `nn.Parameter`
}
IGNORED_TORCH_LEAVES = ("num_batches_tracked",)


def default_rename(module_path: tuple[str, ...]) -> str:
    """PyTorch prefix of a Flax module path: names joined by dots, a trailing `_N` (a Flax name
    for an entry of a PyTorch `Sequential`/`ModuleList`) becomes `.N`.

    `('backbone', 'layer1_0', 'downsample_1')` → `'backbone.layer1.0.downsample.1'`.
    """
    return ".".join(re.sub(r"_(\d+)$", r".\1", name) for name in module_path)


def torch_to_flax_kernel(weight: np.ndarray) -> np.ndarray:
    """`[O, I, *window]` (conv) or `[O, I]` (linear) → `[*window, I, O]` / `[I, O]`."""
    return np.transpose(weight, (*range(2, weight.ndim), 1, 0))


def flax_to_torch_kernel(kernel: np.ndarray) -> np.ndarray:
    """Inverse of `torch_to_flax_kernel`: `[*window, I, O]` → `[O, I, *window]`."""
    nd = kernel.ndim
    return np.transpose(kernel, (nd - 1, nd - 2, *range(nd - 2)))


def torch_key(flax_path: tuple[str, ...], rename: Rename | None = None) -> str:
    """The PyTorch key of a Flax leaf path `(collection, *modules, leaf)`."""
    collection, *modules, leaf = flax_path
    if (collection, leaf) not in LEAF_TO_TORCH:
        raise ValueError(
            f"no PyTorch counterpart for Flax leaf {'/'.join(flax_path)!r}; known leaves: "
            f"{sorted('/'.join(k) for k in LEAF_TO_TORCH)}."
        )
    prefix = (rename or default_rename)(tuple(modules))
    name = LEAF_TO_TORCH[(collection, leaf)]
    return f"{prefix}.{name}" if prefix else name


_CONTEXT_BLOCK_NORM = re.compile(r"^channel_(add|mul)_conv_1$")


def mmcv_torch_shape(flax_path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """`[C]` → `[C, 1, 1]` for the LayerNorm of mmcv's ContextBlock; other shapes unchanged."""
    if len(flax_path) >= 2 and _CONTEXT_BLOCK_NORM.match(flax_path[-2]):
        return (*shape, 1, 1)
    return tuple(shape)


def _torch_layout_shape(
    flax_path: tuple[str, ...], shape: tuple[int, ...], torch_shape: TorchShape | None
) -> tuple[int, ...]:
    if flax_path[-1] == "kernel":
        return tuple(flax_to_torch_kernel(np.empty(shape, np.int8)).shape)
    return tuple((torch_shape or mmcv_torch_shape)(flax_path, tuple(shape)))


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What a conversion matched. Keys are PyTorch names; Flax paths appear in `format()`."""

    loaded: tuple[str, ...]
    missing: tuple[tuple[str, str], ...]  # (torch key, flax path)
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple, tuple, str], ...]  # (key, got, expected, flax path)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors; {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped"
        ]
        lines += [f"  missing:    {key}  (for Flax {path})" for key, path in self.missing]
        lines += [f"  unexpected: {key}" for key in self.unexpected]
        lines += [
            f"  mis-shaped: {key}: checkpoint {got}, model expects {want} (Flax {path})"
            for key, got, want, path in self.mismatched
        ]
        return "\n".join(lines)


class ConversionError(ValueError):
    """A strict conversion found key mismatches; `.report` holds the details."""

    def __init__(self, report: ConversionReport, what: str = "state_dict"):
        self.report = report
        super().__init__(
            f"{what} does not match the model:\n{report.format()}\nFix: build the model with the "
            "checkpoint's arguments (channels, reduction, depth, classes), or pass strict=False to "
            "load only the matching tensors (e.g. a backbone into a segmentor)."
        )


def torch_to_flax(
    state_dict: Mapping[str, Any],
    template: Any,
    *,
    rename: Rename | None = None,
    torch_shape: TorchShape | None = None,
    strict: bool = True,
    what: str = "state_dict",
) -> tuple[dict, ConversionReport]:
    """Converts a PyTorch state_dict to Flax variables shaped like `template`.

    Args:
      state_dict: `{torch key: tensor or array}`.
      template: nested Flax variables (arrays or `jax.ShapeDtypeStruct`), e.g. from
        `jax.eval_shape(module.init, key, x)`.
      rename: Flax module path → PyTorch prefix (default: dot-join).
      torch_shape: PyTorch shape of non-kernel leaves (default: `mmcv_torch_shape`).
      strict: raise `ConversionError` unless every key matches in name and shape.

    Returns:
      `(variables, report)`: nested numpy variables (only the loaded leaves when not strict), in
      the template's dtypes.
    """
    flat_template = traverse_util.flatten_dict(plain_dict(template))
    remaining = {
        key: value
        for key, value in state_dict.items()
        if key.rsplit(".", 1)[-1] not in IGNORED_TORCH_LEAVES
    }
    loaded, missing, mismatched, flat_out = [], [], [], {}
    for path, leaf in flat_template.items():
        key = torch_key(path, rename)
        if key not in remaining:
            missing.append((key, "/".join(path)))
            continue
        value = to_numpy(remaining.pop(key))
        want = _torch_layout_shape(path, tuple(leaf.shape), torch_shape)
        if tuple(value.shape) != want:
            mismatched.append((key, tuple(value.shape), want, "/".join(path)))
            continue
        value = torch_to_flax_kernel(value) if path[-1] == "kernel" else value.reshape(leaf.shape)
        flat_out[path] = np.asarray(value, dtype=leaf.dtype)
        loaded.append(key)
    report = ConversionReport(
        tuple(loaded), tuple(missing), tuple(sorted(remaining)), tuple(mismatched)
    )
    if strict and not report.ok:
        raise ConversionError(report, what)
    return traverse_util.unflatten_dict(flat_out), report


def flax_to_torch_state_dict(
    variables: Any,
    *,
    rename: Rename | None = None,
    torch_shape: TorchShape | None = None,
    as_torch: bool = False,
) -> dict[str, Any]:
    """Flax variables → PyTorch state_dict (numpy arrays, or torch tensors with `as_torch`).

    Kernels go back to `[O, I, *window]`; every batch norm also gets `num_batches_tracked = 0`
    so that `torch.nn.Module.load_state_dict(..., strict=True)` accepts the result.
    """
    state_dict = {}
    for path, value in traverse_util.flatten_dict(plain_dict(variables)).items():
        value = np.asarray(value)
        state_dict[torch_key(path, rename)] = (
            flax_to_torch_kernel(value)
            if path[-1] == "kernel"
            else value.reshape(_torch_layout_shape(path, value.shape, torch_shape))
        )
        if path[0] == "batch_stats" and path[-1] == "mean":
            prefix = torch_key(path, rename)[: -len(".running_mean")]
            state_dict[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    if as_torch:
        import torch  # pylint: disable=import-outside-toplevel

        state_dict = {
            key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state_dict.items()
        }
    return state_dict


def merge_variables(base: Any, loaded: Any) -> dict:
    """`base` with every leaf present in `loaded` replaced (for partial loads, e.g. a backbone)."""
    flat = traverse_util.flatten_dict(plain_dict(base))
    for path, value in traverse_util.flatten_dict(plain_dict(loaded)).items():
        if path not in flat:
            raise ValueError(f"loaded leaf {'/'.join(path)!r} is not in the base variables.")
        if tuple(np.shape(value)) != tuple(np.shape(flat[path])):
            raise ValueError(
                f"loaded leaf {'/'.join(path)!r} has shape {np.shape(value)}; the base has "
                f"{np.shape(flat[path])}."
            )
        flat[path] = value
    return traverse_util.unflatten_dict(flat)


def plain_dict(tree: Any) -> Any:
    """Plain nested dicts (flax FrozenDict or any mapping in, dict out)."""
    if isinstance(tree, Mapping):
        return {key: plain_dict(value) for key, value in tree.items()}
    return tree


def template_of(module: Any, *example_inputs: Any) -> dict:
    """Shapes and dtypes of `module.init(key, *example_inputs)` without computing anything."""
    return plain_dict(jax.eval_shape(module.init, jax.random.key(0), *example_inputs))
