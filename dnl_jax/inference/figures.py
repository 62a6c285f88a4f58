"""The `--explain` figure of one block on one image (matplotlib, Agg, PNG).

Row 1: the image with the queries marked (legend: query k at (x, y)) | the prediction over the
image (legend: the predicted classes) | the unary map | the pairwise map of each query.
Row 2 (NL blocks, whose full attention is not the sum of its terms): the full attention of each
query under its pairwise map. Each map is drawn over the image in grey, stretched from the
block's key grid to the image's pixels, with its own colour bar (attention weight, sums to 1).
"""

from __future__ import annotations

import numpy as np

from dnl_jax.inference import files
from dnl_jax.inference.explain import BlockMaps, Explanation

PANEL_INCHES = 2.6
MARKERS = ("*", "P", "X", "D", "s", "^", "v", "o")


def _map_panel(axis, fig, image, weights, key_grid, title, queries=(), limits=(None, None)):
    height, width = image.shape[:2]
    axis.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
    shown = axis.imshow(
        weights.reshape(key_grid),
        cmap="jet",
        alpha=0.55,
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),
        interpolation="nearest",
        vmin=limits[0],
        vmax=limits[1],
    )
    bar = fig.colorbar(shown, ax=axis, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=6)
    bar.set_label("attention weight", fontsize=6)
    for k, (x, y) in queries:
        axis.plot(x, y, MARKERS[k % len(MARKERS)], color="white", mec="black", ms=9)
    axis.set_title(title, fontsize=8)


def _queries_panel(axis, image, queries):
    axis.imshow(image)
    for k, (x, y) in enumerate(queries):
        marker = MARKERS[k % len(MARKERS)]
        axis.plot(x, y, marker, color="white", mec="black", ms=9, label=f"query {k + 1} ({x}, {y})")
    if queries:
        axis.legend(fontsize=6, loc="lower left", framealpha=0.8)
    axis.set_title("image and queries", fontsize=8)


def _prediction_panel(axis, explanation, class_names, palette):
    from matplotlib.patches import Patch

    axis.imshow(files.overlay(explanation.image, explanation.labels, palette))
    present = np.unique(explanation.labels)
    handles = [
        Patch(facecolor=np.asarray(palette[c]) / 255.0, edgecolor="black", label=class_names[c])
        for c in present[:10]
    ]
    axis.legend(handles=handles, fontsize=6, loc="lower left", framealpha=0.8)
    axis.set_title("prediction", fontsize=8)


def _query_panels(fig, column_axes, image, maps: BlockMaps, k: int, query) -> None:
    """Query k's pairwise map (row 1) and, for NL, its full attention (row 2)."""
    marked = [(k, query)]
    terms = [("pairwise", maps.pairwise), ("full attention", maps.full)]
    for axis, (title, rows) in zip(column_axes, terms, strict=False):
        if rows is not None:
            _map_panel(axis, fig, image, rows[k], maps.key_grid, f"{title}, query {k + 1}", marked)


def explain_figure(explanation: Explanation, maps: BlockMaps, class_names, palette):
    """A matplotlib Figure of `maps` (one block) on `explanation`'s image (module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = explanation.queries
    pairwise = maps.pairwise is not None
    predicted = explanation.labels is not None  # a detector's explanation has no label map
    columns = 1 + predicted + (maps.unary is not None) + (len(queries) if pairwise else 0)
    rows = 2 if maps.kind == "nl" and pairwise else 1
    fig, axes = plt.subplots(
        rows, columns, squeeze=False, figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES * 0.9)
    )
    image = explanation.image
    _queries_panel(axes[0, 0], image, queries)
    column = 1
    if predicted:
        _prediction_panel(axes[0, 1], explanation, class_names, palette)
        column = 2
    if maps.unary is not None:
        what = "implicit" if maps.kind == "nl" else "explicit"
        _map_panel(axes[0, column], fig, image, maps.unary, maps.key_grid, f"unary ({what})")
        column += 1
    for k, query in enumerate(queries if pairwise else ()):
        _query_panels(fig, axes[:, column + k], image, maps, k, query)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        if not axis.images:
            axis.set_axis_off()
    fig.suptitle(
        f"{maps.path} ({maps.kind.upper()}, {maps.grid[0]}x{maps.grid[1]} grid)", fontsize=9
    )
    fig.tight_layout()
    return fig


def clip_figure(explanation: Explanation, maps: BlockMaps):
    """A 3-D block on a video clip: one row per time slice of its key grid (the clip's frame at
    that time), columns unary | pairwise of each query (queries marked on the middle row, whose
    time slice they are taken in). Each map keeps one colour scale over its rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, (slices, *grid) = explanation.frames, maps.key_grid
    if frames is None:
        raise ValueError("clip_figure draws a video model's explanation (with its frames).")
    # (title, weights [M], index of the query it belongs to or None)
    terms: list[tuple[str, np.ndarray, int | None]] = []
    if maps.unary is not None:
        terms.append(("unary", maps.unary, None))
    if maps.pairwise is not None:
        terms += [(f"pairwise, query {k + 1}", row, k) for k, row in enumerate(maps.pairwise)]
    fig, axes = plt.subplots(
        slices, 1 + len(terms), squeeze=False,
        figsize=((1 + len(terms)) * PANEL_INCHES, slices * PANEL_INCHES * 0.9),
    )  # fmt: skip
    for t in range(slices):
        index = min(t * len(frames) // slices, len(frames) - 1)
        axes[t, 0].imshow(frames[index])
        axes[t, 0].set_title(f"frame {index}", fontsize=8)
        for column, (title, weights, k) in enumerate(terms, start=1):
            limits = (float(weights.min()), float(weights.max()))
            marked: list = []
            if k is not None and t == slices // 2:
                marked = [(k, explanation.queries[k])]
            cells = weights.reshape(slices, -1)[t]
            _map_panel(
                axes[t, column], fig, frames[index], cells, tuple(grid), title, marked, limits
            )
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(f"{maps.path} ({maps.kind.upper()}, {'x'.join(map(str, maps.grid))} grid)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


def save_explain_figure(path: str, explanation, maps, class_names, palette) -> str:
    """Writes the figure as PNG (atomically) and closes it."""
    import matplotlib.pyplot as plt

    if explanation.frames is not None:
        fig = clip_figure(explanation, maps)
    else:
        fig = explain_figure(explanation, maps, class_names, palette)
    try:
        return files.save_atomic(path, lambda buffer: fig.savefig(buffer, format="png", dpi=100))
    finally:
        plt.close(fig)


__all__ = ["explain_figure", "clip_figure", "save_explain_figure"]
