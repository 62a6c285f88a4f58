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
from dnl_jax.models.detection.mask_rcnn import MaskRCNN


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
    """image uint8 `[H, W, 3]` (a clip's middle frame for video), labels int32 `[H, W]` (None for
    video), queries [(x, y), ...] (pixels of `image`), blocks; frames uint8 `[T, H, W, 3]`: the
    clip a video model saw (None for images)."""

    image: np.ndarray
    labels: np.ndarray | None
    queries: list[tuple[int, int]]
    blocks: list[BlockMaps]
    frames: np.ndarray | None = None


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


def grid_cell(query: tuple[int, int], image_shape, grid) -> int:
    """Flat index of the cell covering pixel `query` on a 2-D grid (h, w), or on a 3-D grid
    (t, h, w) in its middle time slice (the clip's middle frame)."""
    if len(grid) == 2:
        return query_cell(query, image_shape, grid)
    if len(grid) == 3:
        return (grid[0] // 2) * grid[1] * grid[2] + query_cell(query, image_shape, grid[1:])
    raise ValueError(f"--explain draws 2-D and 3-D blocks; this one has a {len(grid)}-D grid.")


def _block_maps(capture, queries, image_shape) -> BlockMaps:
    cells = np.asarray([grid_cell(q, image_shape, capture.grid) for q in queries], np.int64)
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
    captures = _captures(module, variables, model_input, block)
    blocks = [_block_maps(capture, queries, image_shape) for capture in captures]
    return Explanation(result.image, result.labels, queries, blocks)


def _captures(module, variables, model_input, block, method=None) -> list:
    """The captured non-local blocks of one input (the one named `block`, if given); `method`:
    the module method to run (a detector's backbone: `MaskRCNN.build`)."""
    _, captures = analysis.BlockCapturer(module, method)(variables, model_input[None])
    if block is not None:
        paths = [capture.path for capture in captures]
        captures = [capture for capture in captures if capture.path == block]
        if not captures:
            raise ValueError(f"--block {block!r} is not a non-local block here; blocks: {paths}.")
    if not captures:
        raise ValueError("this model has no non-local block (NL, DNL or GC) to explain.")
    return captures


def explain_clip(module, variables, clip, frames, *, queries=None, block=None) -> Explanation:
    """The maps of a video model's blocks on one clip: `clip` float32 `[T, c, c, 3]` (the model's
    input), `frames` uint8 `[T, c, c, 3]` (the same view for display). Queries are pixels of the
    middle frame (default: its centre)."""
    middle = frames[len(frames) // 2]
    queries = list(queries) if queries else [(middle.shape[1] // 2, middle.shape[0] // 2)]
    check_queries(queries, middle.shape[:2])
    captures = _captures(module, variables, clip, block)
    blocks = [_block_maps(capture, queries, middle.shape[:2]) for capture in captures]
    return Explanation(middle, None, queries, blocks, frames)


def explain_detector(module, variables, example: dict, shown, *, queries=None, block=None):
    """The maps of a detector's backbone blocks on one image: `example` its evaluation input
    (`detection.model_input`: the canvas, scale_factor, orig_size), `shown` uint8 the canvas for
    display. Queries are pixels (x, y) of the original image (default its centre); the
    explanation's image and queries are on the canvas."""
    height, width = (int(v) for v in example["orig_size"])
    queries = list(queries) if queries else [(width // 2, height // 2)]
    check_queries(queries, (height, width))
    scale_h, scale_w = (float(v) for v in example["scale_factor"])
    on_canvas = [(int(x * scale_w), int(y * scale_h)) for x, y in queries]
    captures = _captures(module, variables, example["image"], block, MaskRCNN.build)
    blocks = [_block_maps(capture, on_canvas, shown.shape[:2]) for capture in captures]
    return Explanation(shown, None, on_canvas, blocks)


def npz_arrays(explanation: Explanation) -> dict[str, np.ndarray]:
    """What `--explain` writes to NAME_explain.npz: 'queries_xy' `[n, 2]`, 'labels' `[H, W]` and
    per block (its path with '/' → '.'): BLOCK.unary `[M]`, BLOCK.pairwise `[n, M]`, BLOCK.full
    `[n, M]`, BLOCK.grid, BLOCK.key_grid, BLOCK.query_cells."""
    arrays = {"queries_xy": np.asarray(explanation.queries, np.int64).reshape(-1, 2)}
    if explanation.labels is not None:
        arrays["labels"] = explanation.labels
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
    "explain_clip",
    "explain_detector",
    "grid_cell",
    "default_queries",
    "check_queries",
    "query_cell",
    "npz_arrays",
]
