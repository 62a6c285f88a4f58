"""The paper's statistics of attention maps: query-independence (GCNet's mean cosine distance)
and consistency with ground truth (Pearson correlation with the within-category and boundary
maps of the labels on the block's grid), accumulated over batches (`accumulate`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dnl_jax import IGNORE_LABEL
from dnl_jax.analysis.capture import BlockCapture
from dnl_jax.analysis.decomposition import TERMS, attention_rows

# (attention term, ground-truth map): the paper's two matches, then the crossed pairs.
CONSISTENCIES = (
    ("pairwise", "within"),
    ("unary", "boundary"),
    ("pairwise", "boundary"),
    ("unary", "within"),
    ("full", "within"),
    ("full", "boundary"),
)


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
