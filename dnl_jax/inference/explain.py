"""`--explain`: the non-local blocks' attention on the user's image.

One capture path: `dnl_jax.analysis.BlockCapturer` records each block's θ, φ and unary logits in
one inference pass and `analysis.attention_rows` turns them into maps over the block's key grid
(M = h·w keys, every row sums to 1):

    unary[j]       DNL: softmax_j(conv_mask(x)_j) (explicit); NL: softmax_j(s·μ_θᵀφ_j) (implicit)
    pairwise[q, j] softmax_j(s·(θ_q − μ_θ)ᵀ(φ_j − μ_φ)) for each query q (DNL: / temperature)
    full[q, j]     NL: softmax_j(s·θ_qᵀφ_j), the block's whole attention; DNL: (pairwise + unary)/2

Queries are image pixels (x, y), taken to the feature cell that covers them. The default: one per
predicted class, at the pixel of its largest connected region nearest the region's centroid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from dnl_jax import analysis


@dataclasses.dataclass
class BlockMaps:
    """One block's maps on one image: path, kind ('dnl' | 'nl' | 'gc'), grid (query grid),
    key_grid, query_cells int `[n]`, unary `[M]` or None, pairwise `[n, M]` or None, full
    `[n, M]` or None (float32)."""

    path: str
    kind: str
    grid: tuple
    key_grid: tuple
    query_cells: np.ndarray
    unary: np.ndarray | None
    pairwise: np.ndarray | None
    full: np.ndarray | None


@dataclasses.dataclass
class Explanation:
    """image uint8 `[H, W, 3]`, labels int32 `[H, W]`, queries [(x, y), ...], blocks."""

    image: np.ndarray
    labels: np.ndarray
    queries: list[tuple[int, int]]
    blocks: list[BlockMaps]


def default_queries(labels: np.ndarray) -> list[tuple[int, int]]:
    """(x, y) per predicted class (ascending): the pixel of the class's largest connected region
    nearest to that region's centroid (inside the region even when it is not convex)."""
    queries = []
    for cls in np.unique(labels):
        regions, count = ndimage.label(labels == cls)
        if count == 0:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        ys, xs = np.nonzero(regions == 1 + int(np.argmax(sizes)))
        nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        queries.append((int(xs[nearest]), int(ys[nearest])))
    return queries


def check_queries(queries: Sequence[tuple[int, int]], shape: tuple[int, int]) -> None:
    """ValueError (one line) for a query outside an image of `shape` = (H, W)."""
    height, width = shape
    for x, y in queries:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(
                f"--query {x},{y} is outside the {width}x{height} image; give x in "
                f"[0, {width}) and y in [0, {height}) (pixels, origin top left)."
            )


def query_cell(query: tuple[int, int], image_shape, grid) -> int:
    """Flat index of the grid cell covering image pixel `query` = (x, y)."""
    x, y = query
    row = min(y * grid[0] // image_shape[0], grid[0] - 1)
    col = min(x * grid[1] // image_shape[1], grid[1] - 1)
    return row * grid[1] + col


def _block_maps(capture, queries, image_shape) -> BlockMaps:
    if len(capture.grid) != 2:
        raise ValueError(
            f"block {capture.path} has a {len(capture.grid)}-D grid; --explain on images needs "
            "2-D blocks."
        )
    cells = np.asarray([query_cell(q, image_shape, capture.grid) for q in queries], np.int64)
    rows = analysis.attention_rows(capture, cells)

    def first(term):
        return None if rows[term] is None else np.asarray(rows[term][0], np.float32)

    unary = first("unary")
    has_pairwise = capture.q is not None
    return BlockMaps(
        capture.path,
        capture.kind,
        tuple(capture.grid),
        tuple(capture.key_grid),
        cells,
        None if unary is None else unary[0],
        first("pairwise") if has_pairwise else None,
        first("full") if has_pairwise else None,
    )


def explain(module, variables, model_input, result, *, queries=None, block=None) -> Explanation:
    """The maps of every non-local block of `module` (or the one whose path is `block`) on one
    preprocessed image `model_input` `[h, w, 3]`; `result` its `SegmentationResult`."""
    image_shape = result.labels.shape
    queries = list(queries) if queries else default_queries(result.labels)
    check_queries(queries, image_shape)
    _, captures = analysis.BlockCapturer(module)(variables, model_input[None])
    if block is not None:
        paths = [capture.path for capture in captures]
        captures = [capture for capture in captures if capture.path == block]
        if not captures:
            raise ValueError(f"--block {block!r} is not a non-local block here; blocks: {paths}.")
    if not captures:
        raise ValueError("this model has no non-local block (NL, DNL or GC) to explain.")
    blocks = [_block_maps(capture, queries, image_shape) for capture in captures]
    return Explanation(result.image, result.labels, queries, blocks)


def npz_arrays(explanation: Explanation) -> dict[str, np.ndarray]:
    """What `--explain` writes to NAME_explain.npz: 'queries_xy' `[n, 2]`, 'labels' `[H, W]` and
    per block (its path with '/' → '.'): BLOCK.unary `[M]`, BLOCK.pairwise `[n, M]`, BLOCK.full
    `[n, M]`, BLOCK.grid, BLOCK.key_grid, BLOCK.query_cells."""
    arrays = {
        "queries_xy": np.asarray(explanation.queries, np.int64).reshape(-1, 2),
        "labels": explanation.labels,
    }
    for maps in explanation.blocks:
        name = maps.path.replace("/", ".")
        arrays[f"{name}.grid"] = np.asarray(maps.grid)
        arrays[f"{name}.key_grid"] = np.asarray(maps.key_grid)
        arrays[f"{name}.query_cells"] = maps.query_cells
        for term in ("unary", "pairwise", "full"):
            if getattr(maps, term) is not None:
                arrays[f"{name}.{term}"] = getattr(maps, term)
    return arrays


__all__ = [
    "BlockMaps",
    "Explanation",
    "explain",
    "default_queries",
    "check_queries",
    "query_cell",
    "npz_arrays",
]
