"""One forward pass of a model → the attention inputs of each of its non-local-family blocks.

`BlockCapturer(module)(variables, inputs)` intercepts, for every `NonLocal`,
`DisentangledNonLocal`, `ContextBlock` and `OfficialDisentangledNonLocal` of the model, the
block's input and its sub-modules' outputs (θ, φ, conv_mask) and returns one `BlockCapture` per
block: queries θ `[B, N, C']`, keys φ `[B, M, C']` (sub-sampled as the block does) and unary
logits `[B, M]`, with the scale and whitening of the block's own softmax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dnl_jax.core import blocks, blocks_official

BLOCK_TYPES = (
    blocks.NonLocal,
    blocks.DisentangledNonLocal,
    blocks.ContextBlock,
    blocks_official.OfficialDisentangledNonLocal,
)
_CAPTURED = ("theta", "phi", "conv_mask", "conv_query", "conv_key")
# The official-code block's names of the queries and keys.
_OFFICIAL_NAMES = {"conv_query": "theta", "conv_key": "phi"}


@dataclasses.dataclass
class BlockCapture:
    """One block's attention inputs for a batch (numpy float32).

    Attributes:
      path: the block's module path, e.g. 'decode_head/dnl_block'.
      kind: 'nl' (implicit terms), 'dnl' (explicit terms) or 'gc' (unary only).
      grid: spatial shape of the queries (the block's input), N = prod(grid).
      key_grid: spatial shape of the keys (smaller than `grid` with sub-sampling), M = prod.
      q: `[B, N, C']` queries θ, or None (no pairwise term).
      k: `[B, M, C']` keys φ, or None.
      unary_logits: `[B, M]` explicit unary logits (DNL conv_mask, GC conv_mask), or None.
      scale: multiplies θᵀφ in the block's softmax (1/√C' / temperature for DNL).
      whiten: whether the block's own pairwise logits are whitened (DNL).
    """

    path: str
    kind: str
    grid: tuple
    key_grid: tuple
    q: np.ndarray | None
    k: np.ndarray | None
    unary_logits: np.ndarray | None
    scale: float = 1.0
    whiten: bool = True


def _block_settings(block: nn.Module) -> dict:
    """The Python attributes the analysis needs from a block instance."""
    if isinstance(block, blocks.ContextBlock):
        return {"kind": "gc", "window": ()}
    if isinstance(block, blocks_official.OfficialDisentangledNonLocal):
        if block.whiten == "ln_nostd":
            raise ValueError(
                f"block {'/'.join(block.path)} whitens with 'ln_nostd' (one mean "
                "per sample); the analysis covers 'channel' whitening or none."
            )
        return {
            "kind": "dnl",
            "window": (),
            "use_scale": block.use_scale,
            "whiten": block.whiten == "channel",
            "temperature": block.temperature,
        }
    if isinstance(block, blocks.NonLocal) and block.mode != "embedded_gaussian":
        raise ValueError(
            f"block {'/'.join(block.path)} uses mode {block.mode!r}: only "
            "'embedded_gaussian' non-local blocks have a softmax to decompose."
        )
    window = (tuple(block.pool_window) if block.pool_window else None) if block.sub_sample else ()
    if isinstance(block, blocks.NonLocal):
        return {
            "kind": "nl",
            "window": window,
            "use_scale": block.use_scale,
            "whiten": False,
            "temperature": 1.0,
        }
    return {
        "kind": "dnl",
        "window": window,
        "use_scale": block.use_scale,
        "whiten": block.whiten,
        "temperature": block.temperature,
    }


class BlockCapturer:
    """`capturer(variables, inputs)` → (model outputs, [BlockCapture, ...]) for `module`.

    The block's sub-module outputs (θ, φ, conv_mask) are intercepted with
    `flax.linen.intercept_methods` during one jitted inference pass (`train=False`), so nothing
    of the model changes and no N × M matrix is formed. Block attributes are read while tracing.
    """

    def __init__(self, module: nn.Module, method=None):
        """`method`: the module method to run instead of `__call__(inputs, train=False)`, called
        as `method(inputs)` (e.g. `MaskRCNN.build`, which runs the backbone on images alone)."""
        self.module, self.method = module, method
        self.settings: dict[str, dict] = {}
        self._forward = jax.jit(self._trace)

    def _trace(self, variables, inputs):
        captured: dict[str, dict] = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            module = context.module
            if context.method_name != "__call__":
                return out
            if isinstance(module, BLOCK_TYPES):
                path = "/".join(module.path)
                self.settings[path] = _block_settings(module)
                captured.setdefault(path, {})["input"] = args[0]
            elif isinstance(module.parent, BLOCK_TYPES) and module.name in _CAPTURED:
                name = _OFFICIAL_NAMES.get(module.name, module.name)
                captured.setdefault("/".join(module.parent.path), {})[name] = out
            return out

        with nn.intercept_methods(interceptor):
            if self.method is None:
                outputs = self.module.apply(variables, inputs, train=False)
            else:
                outputs = self.module.apply(variables, inputs, method=self.method)
        return outputs, captured

    def __call__(self, variables: Mapping, inputs) -> tuple[Any, list[BlockCapture]]:
        outputs, captured = self._forward(dict(variables), inputs)
        return outputs, [self._capture(path, arrays) for path, arrays in captured.items()]

    def _capture(self, path: str, arrays: dict) -> BlockCapture:
        settings = self.settings[path]
        grid = tuple(arrays["input"].shape[1:-1])

        def pool(x):
            return _sub_sample(np.asarray(x, np.float32), settings["window"])

        unary = arrays.get("conv_mask")
        unary = None if unary is None else blocks.flatten_positions(pool(unary))[..., 0]
        if settings["kind"] == "gc" or "theta" not in arrays:
            key_grid = grid if unary is None else tuple(pool(arrays["conv_mask"]).shape[1:-1])
            return BlockCapture(path, settings["kind"], grid, key_grid, None, None, unary)
        keys = pool(arrays["phi"])
        q = np.asarray(blocks.flatten_positions(arrays["theta"]), np.float32)
        scale = (q.shape[-1] ** -0.5 if settings["use_scale"] else 1.0) / settings["temperature"]
        return BlockCapture(
            path,
            settings["kind"],
            grid,
            tuple(keys.shape[1:-1]),
            q,
            np.asarray(blocks.flatten_positions(keys)),
            unary,
            scale,
            settings["whiten"],
        )


def _sub_sample(x: np.ndarray, window) -> np.ndarray:
    """The blocks' key sub-sampling: max-pool `[B, *spatial, C]` by `window` (None: 2 per
    spatial dim; () or False-y sub_sample: unchanged)."""
    if window == ():
        return x
    window = tuple(window or (2,) * (x.ndim - 2))
    return np.asarray(nn.max_pool(x, window, strides=window, padding="VALID"))
