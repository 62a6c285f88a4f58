"""The DNL paper's analysis of trained non-local blocks (Yin et al., ECCV 2020, Sec. 3).

For every non-local-family block of a model (`NonLocal` in 'embedded_gaussian' mode,
`DisentangledNonLocal`, `ContextBlock`), in heads or backbones, 2-D or 3-D, trained here or
converted from mmseg (same modules), `BlockCapturer` records the block's queries θ `[B, N, C']`,
keys φ `[B, M, C']` and unary logits `[B, M]` from one forward pass, and the functions below turn
them into attention maps and statistics, a chunk of queries at a time (never all N × M at once):

- **Decomposition** (`attention_rows`). A plain `NonLocal` has the implicit terms of
  `dnl_jax.core.ops.decompose_nonlocal_logits`: a whitened pairwise softmax_j(s·(θ_i−μ_θ)ᵀ(φ_j−μ_φ))
  and a unary softmax_j(s·μ_θᵀφ_j), with softmax(pairwise + unary logits) equal to its full
  attention softmax_j(s·θ_iᵀφ_j). A `DisentangledNonLocal` has them explicitly: its pairwise
  softmax (temperature included) and softmax(conv_mask(x)); its full attention, the weights that
  multiply g, is their sum, reported halved so that it sums to 1 like the others. A
  `ContextBlock` has a unary term only.
- **Query-independence** (`query_independence`), GCNet's measure: the mean cosine distance
  1 − cos(a_i, a_i') between the attention maps of two different query positions, over all
  pairs of (valid) queries of an image, then over images. 0: every query sees the same map.
- **Consistency with ground truth** (`consistency`): labels taken to the block's grid (majority
  vote per cell, `labels_to_grid`); the within-category map of query i (1 where label_j equals
  label_i) and the boundary map (1 where a 4-neighbour cell has another label, `boundary_map`).
  The paper's exact statistic is not available to us; here it is the **Pearson correlation**
  between an attention map and a binary map over the valid keys, averaged over valid queries and
  images. Queries whose binary map is constant (no boundary in the image, or one label
  everywhere) have no correlation and are left out. Ignore pixels (255) are left out as queries
  and as keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dnl_jax.core import blocks, blocks_official, ops

IGNORE_LABEL = 255
BLOCK_TYPES = (
    blocks.NonLocal,
    blocks.DisentangledNonLocal,
    blocks.ContextBlock,
    blocks_official.OfficialDisentangledNonLocal,
)
TERMS = ("full", "pairwise", "unary")
# (attention term, ground-truth map): the paper's two matches, then the crossed pairs.
CONSISTENCIES = (
    ("pairwise", "within"),
    ("unary", "boundary"),
    ("pairwise", "boundary"),
    ("unary", "within"),
    ("full", "within"),
    ("full", "boundary"),
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


# ------------------------------------------------------------------------------ attention maps
def _softmax(logits) -> np.ndarray:
    return ops.host_softmax(np.asarray(logits, np.float32))


def attention_logits(capture: BlockCapture, queries: np.ndarray) -> dict[str, np.ndarray | None]:
    """Logits of the block's terms for the query positions `queries` (int `[n]`).

    Returns {'full': `[B, n, M]` (NL only: s·θ_iᵀφ_j), 'pairwise': `[B, n, M]`, 'unary':
    `[B, 1, M]`}, None for a term the block lacks. For NL, softmax(pairwise + unary) ==
    softmax(full) (`ops.decompose_nonlocal_logits`), computed on a chunk of queries: the whitened
    rows of the chunk use the means over all N queries.
    """
    logits = {"full": None, "pairwise": None, "unary": None}
    if capture.unary_logits is not None:
        logits["unary"] = capture.unary_logits[:, None, :]
    if capture.q is None:
        return logits
    q, k, scale = capture.q, capture.k, capture.scale
    chunk = q[:, queries]
    if capture.kind == "nl":
        logits["full"] = np.asarray(ops.nonlocal_logits(chunk, k, scale=scale))
        logits["unary"] = np.asarray(ops.unary_logits(q, k, scale=scale))
    if capture.whiten or capture.kind == "nl":
        centred_q = chunk - q.mean(axis=1, keepdims=True)
        logits["pairwise"] = np.asarray(
            ops.nonlocal_logits(centred_q, k - k.mean(axis=1, keepdims=True), scale=scale)
        )
    else:
        logits["pairwise"] = np.asarray(ops.nonlocal_logits(chunk, k, scale=scale))
    return logits


def attention_rows(capture: BlockCapture, queries: np.ndarray) -> dict[str, np.ndarray | None]:
    """Attention weights `[B, n, M]` of each term for the queries `queries` (rows sum to 1).

    'full' is what the block applies to its values: NL softmax(θᵀφ); DNL (pairwise + unary) / 2,
    or its one term when the other is switched off; GC its unary map. 'unary' is broadcast over
    the n queries. None for a term the block lacks.
    """
    logits = attention_logits(capture, queries)
    shape = (capture.unary_logits if capture.q is None else capture.q).shape[0], len(queries)
    rows = {}
    for term in ("pairwise", "unary"):
        rows[term] = (
            None
            if logits[term] is None
            else np.broadcast_to(_softmax(logits[term]), (*shape, int(np.prod(capture.key_grid))))
        )
    if logits["full"] is not None:
        rows["full"] = _softmax(logits["full"])
    else:
        present = [rows[t] for t in ("pairwise", "unary") if rows[t] is not None]
        rows["full"] = sum(present) / len(present)
    return rows


# ------------------------------------------------------------------------------ ground truth
def labels_to_grid(
    labels: np.ndarray, grid: tuple, *, ignore_label: int = IGNORE_LABEL
) -> np.ndarray:
    """Labels `[B, H, W]` → `[B, h, w]` on a block's feature grid: the most frequent non-ignored
    label of each cell (pixel row r falls in cell row r·h // H), `ignore_label` where a cell has
    only ignored pixels. Ties go to the smaller label."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or len(grid) != 2:
        raise ValueError(
            f"labels_to_grid needs labels [B, H, W] and a 2-D grid; got labels "
            f"{labels.shape} and grid {tuple(grid)} (video blocks have no pixel "
            "labels to compare with)."
        )
    batch, height, width = labels.shape
    rows = (np.arange(height) * grid[0]) // height
    cols = (np.arange(width) * grid[1]) // width
    valid = labels != ignore_label
    classes = int(labels[valid].max()) + 1 if valid.any() else 1
    counts = np.zeros((batch, grid[0], grid[1], classes), np.int64)
    b, r, c = np.nonzero(valid)
    np.add.at(counts, (b, rows[r], cols[c], labels[b, r, c]), 1)
    return np.where(counts.sum(-1) > 0, counts.argmax(-1), ignore_label).astype(np.int64)


def boundary_map(grid_labels: np.ndarray, *, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """`[B, *grid]` labels → int `[B, *grid]`: 1 where a valid cell has a valid neighbour along
    one spatial axis (4-neighbours in 2-D) with another label, else 0 (ignored cells: 0)."""
    labels = np.asarray(grid_labels)
    boundary = np.zeros(labels.shape, bool)
    for axis in range(1, labels.ndim):
        for shift in (1, -1):
            neighbour = np.roll(labels, shift, axis=axis)
            edge = [slice(None)] * labels.ndim
            edge[axis] = 0 if shift == 1 else -1  # np.roll wraps: no neighbour there
            differs = (neighbour != labels) & (neighbour != ignore_label)
            differs[tuple(edge)] = False
            boundary |= differs
    return (boundary & (labels != ignore_label)).astype(np.int64)


def pearson_rows(maps: np.ndarray, targets: np.ndarray, valid_keys: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of `maps` `[..., n, M]` with `targets` (broadcastable)
    over the keys where `valid_keys` (`[..., 1, M]`) is True. NaN where either row is constant."""
    weight = np.broadcast_to(valid_keys, maps.shape).astype(np.float64)
    count = weight.sum(-1, keepdims=True)
    a = maps.astype(np.float64)
    t = np.broadcast_to(targets, maps.shape).astype(np.float64)
    a_centred = (a - (a * weight).sum(-1, keepdims=True) / count) * weight
    t_centred = (t - (t * weight).sum(-1, keepdims=True) / count) * weight
    covariance = (a_centred * t_centred).sum(-1)
    norm = np.sqrt((a_centred**2).sum(-1) * (t_centred**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-12, covariance / np.maximum(norm, 1e-300), np.nan)


# ------------------------------------------------------------------------------ statistics
def normalised_row_sum(rows: np.ndarray, valid_queries: np.ndarray) -> np.ndarray:
    """Σ_i a_i / ‖a_i‖ over the valid queries: rows `[B, n, M]`, valid `[B, n]` → `[B, M]`."""
    rows = rows.astype(np.float64)  # trained maps can differ by 1e-6: keep rounding below that
    unit = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-300)
    return np.einsum("bnm,bn->bm", unit, valid_queries.astype(np.float64))


def query_independence_from_sum(row_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean cosine distance over pairs i ≠ i' of `count` unit rows summing to `row_sum`
    (`[B, M]`, `[B]`): 1 − (‖Σ u_i‖² − n) / (n (n − 1)), since Σ_{i≠i'} cos = ‖Σ u_i‖² − n.
    NaN for images with fewer than two queries."""
    count = np.asarray(count, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        similarity = ((row_sum**2).sum(-1) - count) / (count * (count - 1))
    return np.where(count >= 2, 1.0 - similarity, np.nan)


def query_independence(maps: np.ndarray) -> float:
    """GCNet's query-independence of one image's attention maps `[N, M]` (every row a query):
    the mean cosine distance between the maps of two different queries (0: all the same)."""
    maps = np.asarray(maps)[None]
    total = normalised_row_sum(maps, np.ones(maps.shape[:2], bool))
    return float(query_independence_from_sum(total, np.array([maps.shape[1]]))[0])


def consistency(
    maps: np.ndarray,
    query_labels: np.ndarray,
    key_labels: np.ndarray,
    target: str,
    *,
    ignore_label: int = IGNORE_LABEL,
    key_grid: tuple | None = None,
) -> np.ndarray:
    """Pearson correlation of each attention row with a ground-truth map (module docstring).

    Args:
      maps: `[B, n, M]` attention rows of n queries.
      query_labels: `[B, n]` the queries' labels on the block's grid.
      key_labels: `[B, M]` the keys' labels on the key grid (flattened).
      target: 'within' (1 where key label == query label) or 'boundary' (`boundary_map` of the
        key labels; needs `key_grid`, the keys' spatial shape).
    Returns:
      `[B, n]` correlations; NaN for ignored queries and constant maps.
    """
    valid_keys = (key_labels != ignore_label)[:, None, :]
    if target == "within":
        targets = key_labels[:, None, :] == query_labels[:, :, None]
    elif target == "boundary":
        grid_labels = key_labels.reshape(key_labels.shape[0], *key_grid)
        targets = boundary_map(grid_labels, ignore_label=ignore_label).reshape(key_labels.shape)[
            :, None, :
        ]
    else:
        raise ValueError(f"target {target!r}; choose 'within' or 'boundary'.")
    correlation = pearson_rows(maps, targets, valid_keys)
    return np.where(query_labels != ignore_label, correlation, np.nan)


@dataclasses.dataclass
class BlockStatistics:
    """Running sums of one block's statistics over batches; `summary()` gives the means.

    Names: 'query_independence/<term>' (one value per image) and '<term>~<target>' (one value
    per valid query), terms as `attention_rows`, targets 'within' / 'boundary'.
    """

    path: str
    kind: str
    sums: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)

    def add(self, name: str, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        values = values[np.isfinite(values)]
        self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.counts[name] = self.counts.get(name, 0) + int(values.size)

    def summary(self) -> dict[str, Any]:
        means = {
            name: (self.sums[name] / self.counts[name] if self.counts[name] else None)
            for name in self.sums
        }
        return {"path": self.path, "kind": self.kind, "means": means, "counts": dict(self.counts)}


def accumulate(
    stats: BlockStatistics,
    capture: BlockCapture,
    labels: np.ndarray | None = None,
    *,
    ignore_label: int = IGNORE_LABEL,
    chunk: int = 1024,
) -> None:
    """Adds one batch's query-independence and consistencies to `stats`.

    `labels` `[B, H, W]` (None for video: query-independence only) are taken to the query and
    key grids. Attention rows are formed `chunk` queries at a time: `[B, chunk, M]` at most.
    """
    batch = (capture.unary_logits if capture.q is None else capture.q).shape[0]
    num_queries = int(np.prod(capture.grid))
    query_labels = key_labels = None
    valid = np.ones((batch, num_queries), bool)
    if labels is not None:
        query_labels = labels_to_grid(labels, capture.grid, ignore_label=ignore_label).reshape(
            batch, -1
        )
        key_labels = labels_to_grid(labels, capture.key_grid, ignore_label=ignore_label).reshape(
            batch, -1
        )
        valid = query_labels != ignore_label
    sums: dict[str, np.ndarray] = {}
    for start in range(0, num_queries, chunk):
        queries = np.arange(start, min(start + chunk, num_queries))
        rows = attention_rows(capture, queries)
        for term in TERMS:
            if rows[term] is None:
                continue
            part = normalised_row_sum(rows[term], valid[:, queries])
            sums[term] = part if term not in sums else sums[term] + part
            if query_labels is None:
                continue
            for term_name, target in CONSISTENCIES:
                if term_name == term:
                    stats.add(
                        f"{term}~{target}",
                        consistency(
                            rows[term],
                            query_labels[:, queries],
                            key_labels,
                            target,
                            ignore_label=ignore_label,
                            key_grid=capture.key_grid,
                        ),
                    )
    for term, row_sum in sums.items():
        stats.add(f"query_independence/{term}", query_independence_from_sum(row_sum, valid.sum(1)))


__all__ = [
    "BlockCapture",
    "BlockCapturer",
    "BlockStatistics",
    "attention_logits",
    "attention_rows",
    "labels_to_grid",
    "boundary_map",
    "pearson_rows",
    "query_independence",
    "consistency",
    "accumulate",
    "CONSISTENCIES",
    "TERMS",
]
