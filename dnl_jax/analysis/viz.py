"""Attention maps of a segmentor's `DisentangledNonLocal` block and the paper-style figure
(Yin et al., ECCV 2020, Fig. 1/4): per val image, the image, ground truth, prediction, the pairwise
attention map of three query pixels and the unary map. The label panels share a class colour bar,
each attention map has its own weight colour bar, and a legend names the marks: the query pixel
(red star) and, where the data knows them, the salient keys (the synthetic scenes' beacon),
outlined in magenta in every panel.

The maps come from the one capture path of the analysis (`dnl_jax.analysis.BlockCapturer`: the
block's θ, φ and unary logits from one inference pass, its input's shape the feature grid) and
its `attention_rows`:

    pairwise[b, i, :] = softmax_j(scale · θ̂_iᵀφ̂_j / temperature)   [B, N, M], rows sum to 1
    unary[b, :]       = softmax_j(conv_mask(x)_j)                     [B, M],    sums to 1

with N = h·w query and M key positions of the block's `[B, h, w, C]` features (M = N without
sub-sampling). Figures use matplotlib's Agg backend and are written as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import numpy as np

from dnl_jax import IGNORE_LABEL, analysis

PANEL_INCHES = 2.0
DPI = 100


def capture_attention(module: nn.Module, variables: Mapping, images) -> dict | None:
    """The attention weights of the first `DisentangledNonLocal`-kind block of `module`, from the
    analysis' capture of the block's inputs (`analysis.BlockCapturer`, one inference pass).

    Args:
      module: a flax module containing a DNL block (e.g. a DNL `Segmentor`).
      variables: its `{'params', 'batch_stats'}`.
      images: `[B, H, W, 3]` float inputs.
    Returns:
      None when the module has no DNL block; else a dict of float32 numpy arrays
      (`analysis.attention_rows`): 'logits' `[B, H, W, K]`, 'grid' `(h, w)`, 'pairwise'
      `[B, h·w, M]` or None (unary-only block), 'unary' `[B, M]` or None (pairwise-only block).
    """
    outputs, captures = analysis.BlockCapturer(module)(variables, images)
    found = next((capture for capture in captures if capture.kind == "dnl"), None)
    if found is None:
        return None
    if len(found.grid) != 2:
        raise ValueError(f"attention figures need a 2-D feature grid; the block saw {found.grid}.")
    rows = analysis.attention_rows(found, np.arange(int(np.prod(found.grid))))
    unary = None if rows["unary"] is None else np.asarray(rows["unary"][:, 0], np.float32)
    pairwise = None if rows["pairwise"] is None else np.asarray(rows["pairwise"], np.float32)
    return {
        "logits": np.asarray(outputs["logits"], np.float32),
        "grid": found.grid,
        "pairwise": pairwise,
        "unary": unary,
    }


def query_pixels(label: np.ndarray, count: int = 3) -> list[tuple[int, int]]:
    """`count` (row, col) query pixels: the median pixel of each labelled class, largest non-
    background classes first, then background, then fixed points to fill up."""
    classes, sizes = np.unique(label[label != IGNORE_LABEL], return_counts=True)
    order = sorted(zip(classes, sizes, strict=False), key=lambda cs: (cs[0] == 0, -cs[1]))
    points = []
    for cls, _ in order[:count]:
        rows, cols = np.nonzero(label == cls)
        middle = len(rows) // 2  # np.nonzero is row-major: the middle one lies inside the class
        points.append((int(rows[middle]), int(cols[middle])))
    height, width = label.shape
    fill = [(height // 4, width // 4), (height // 2, 3 * width // 4), (3 * height // 4, width // 2)]
    return (points + fill)[:count]


def _grid_index(point: tuple[int, int], image_shape, grid) -> int:
    """Flat index of the feature position covering image pixel `point`."""
    row = min(point[0] * grid[0] // image_shape[0], grid[0] - 1)
    col = min(point[1] * grid[1] // image_shape[1], grid[1] - 1)
    return row * grid[1] + col


def _label_colours(num_classes: int):
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")(np.arange(num_classes))
    return ListedColormap(colours)


SALIENT_COLOUR = "magenta"  # absent from the 'jet' attention colours and the class colours


def attention_figure(
    images: np.ndarray,
    labels: np.ndarray,
    maps: Mapping,
    *,
    num_classes: int,
    num_queries: int = 3,
    salient: np.ndarray | None = None,
):
    """A matplotlib Figure: one row per image, columns image | ground truth | prediction |
    pairwise map of each query (if the block has the term) | unary map (if it has the term).

    `images` `[B, H, W, 3]`, `labels` `[B, H, W]`, `maps` from `capture_attention`, `salient`
    None or bool `[B, H, W]` (the beacon of the synthetic scenes), outlined in every panel. Each
    panel is `PANEL_INCHES` square at `DPI`, so the PNG is (columns · 200) × (rows · 200) pixels;
    the colour bars take their room from the panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, pairwise, unary = maps["grid"], maps["pairwise"], maps["unary"]
    if pairwise is not None and pairwise.shape[-1] != grid[0] * grid[1]:
        raise ValueError(
            f"pairwise maps over {pairwise.shape[-1]} keys do not match the "
            f"{grid} query grid (sub-sampled keys are not drawn)."
        )
    columns = 3 + (num_queries if pairwise is not None else 0) + (unary is not None)
    rows = len(images)
    fig, axes = plt.subplots(
        rows, columns, squeeze=False, dpi=DPI, figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES)
    )
    cmap = _label_colours(num_classes)
    prediction = np.argmax(maps["logits"], axis=-1)
    for b in range(rows):
        shown = _display_image(images[b])
        height, width = labels[b].shape
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        panels = [
            ("image", shown, {}),
            (
                "ground truth",
                np.ma.masked_equal(labels[b], IGNORE_LABEL),
                dict(cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest"),
            ),
            (
                "prediction",
                prediction[b],
                dict(cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest"),
            ),
        ]
        for column, (title, data, style) in enumerate(panels):
            artist = axes[b, column].imshow(data, **style)
            axes[b, column].set_title(title, fontsize=8)
        _class_colour_bar(fig, axes[b, 2], artist, num_classes)
        column = 3
        if pairwise is not None:
            for q, point in enumerate(query_pixels(labels[b], num_queries)):
                weights = pairwise[b, _grid_index(point, (height, width), grid)].reshape(grid)
                _overlay(axes[b, column], shown, weights, extent, fig)
                axes[b, column].plot(point[1], point[0], marker="*", color="red", markersize=9)
                axes[b, column].set_title(f"pairwise, query {q + 1}", fontsize=8)
                column += 1
        if unary is not None:
            _overlay(axes[b, column], shown, unary[b].reshape(grid), extent, fig)
            axes[b, column].set_title("unary", fontsize=8)
        if salient is not None:
            for axis in axes[b]:
                _outline(axis, salient[b])
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout(pad=0.3, rect=(0, 0.1 / rows, 1, 1))
    _legend(fig, queries=pairwise is not None, salient=salient is not None)
    return fig


def _class_colour_bar(fig, axis, artist, num_classes: int) -> None:
    """The class colours of the label panels, one tick per class (up to 20 classes)."""
    bar = fig.colorbar(artist, ax=axis, fraction=0.046, pad=0.02)
    if num_classes <= 20:
        bar.set_ticks(range(num_classes))
    bar.ax.tick_params(labelsize=5)
    bar.set_label("class", fontsize=6)


def _outline(axis, mask: np.ndarray) -> None:
    """A rectangle around the True pixels of `mask` `[H, W]` (nothing if there are none)."""
    from matplotlib.patches import Rectangle

    rows, cols = np.nonzero(mask)
    if rows.size:
        corner = (cols.min() - 0.5, rows.min() - 0.5)
        size = (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
        axis.add_patch(Rectangle(corner, *size, fill=False, edgecolor=SALIENT_COLOUR, lw=1.2))


def _legend(fig, *, queries: bool, salient: bool) -> None:
    """What the marks mean, below the panels."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    bars = Patch(facecolor="none", edgecolor="none", label="colour bars: attention weight")
    handles: list = [bars]
    if queries:
        handles.append(
            Line2D([], [], marker="*", color="red", ls="none", ms=8, label="query pixel")
        )
    if salient:
        handles.append(
            Patch(facecolor="none", edgecolor=SALIENT_COLOUR, label="beacon (salient keys)")
        )
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)


def _display_image(image: np.ndarray) -> np.ndarray:
    """Per-image min-max rescale to [0, 1] (inputs are normalised, not in display range)."""
    image = np.asarray(image, np.float32)
    low, high = image.min(), image.max()
    return (image - low) / max(high - low, 1e-6)


def _overlay(axis, image: np.ndarray, weights: np.ndarray, extent, fig=None) -> None:
    """The image in grey with the attention weights (feature grid, stretched over it) on top,
    and, given the `fig`, their colour bar."""
    axis.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=1)
    artist = axis.imshow(weights, cmap="jet", alpha=0.55, extent=extent, interpolation="nearest")
    if fig is not None:
        bar = fig.colorbar(artist, ax=axis, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=5)


def save_attention_figure(
    workdir: str,
    module: nn.Module,
    variables: Mapping,
    source: Any,
    *,
    num_classes: int,
    num_images: int = 3,
    filename: str = "attention.png",
    preprocess: Callable[[dict], dict] | None = None,
) -> str | None:
    """Writes the attention figure of the first `num_images` examples of the random-access
    `source` (items `{'image': [H, W, 3], 'label': [H, W]}`) to `workdir/filename`.

    `preprocess` maps a raw example to the model's input: `{'image': float model input,
    'label': [H, W] at the input's size, 'display': the image to draw}` (e.g. resized and
    normalised uint8 images of a real dataset); None feeds the examples as they are.

    Returns the PNG's path, or None when `module` has no `DisentangledNonLocal` block (e.g. an
    FCN, NL or GC head), in which case nothing is written.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1; got {num_images}.")
    examples = [source[i] for i in range(min(num_images, len(source)))]
    if preprocess is not None:
        examples = [preprocess(ex) for ex in examples]
    # One image per forward pass: val images may differ in size (real datasets).
    captured = [capture_attention(module, variables, ex["image"][None]) for ex in examples[:1]]
    if captured[0] is None:
        return None
    captured += [capture_attention(module, variables, ex["image"][None]) for ex in examples[1:]]
    if len({c["grid"] for c in captured}) > 1 or len({ex["image"].shape for ex in examples}) > 1:
        examples, captured = examples[:1], captured[:1]  # rows must share a layout
    maps = {"grid": captured[0]["grid"]}
    for key in ("logits", "pairwise", "unary"):
        parts = [c[key] for c in captured]
        maps[key] = None if parts[0] is None else np.concatenate(parts)
    import matplotlib.pyplot as plt

    labels = np.stack([ex["label"] for ex in examples])
    fig = attention_figure(
        np.stack([ex.get("display", ex["image"]) for ex in examples]),
        labels,
        maps,
        num_classes=num_classes,
        salient=_salient_maps(source, labels.shape),
    )
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, filename)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _salient_maps(source, shape) -> np.ndarray | None:
    """bool `[B, H, W]` of the first B examples, from a source that knows them (the synthetic
    scenes' `salient_map`), when they match the drawn labels' `shape`; else None."""
    if not hasattr(source, "salient_map"):
        return None
    masks = np.stack([source.salient_map(i) for i in range(shape[0])])
    return masks if masks.shape == tuple(shape) else None


def decomposition_figure(rows: Sequence[Mapping], *, num_classes: int):
    """The analysis figure (Yin et al., Fig. 1): one row per (model, image), columns image |
    ground truth | full attention of each query | its pairwise term | the unary term.

    Each row: {'title': str, 'image': [H, W, 3], 'label': [H, W], 'grid': (h, w), 'points':
    [(row, col), ...] query pixels, 'maps': {'full', 'pairwise', 'unary'}: `[n_points, h·w]` or
    None} (from `dnl_jax.analysis.attention_rows`), and optionally 'salient': `[h, w]` (the
    scene's salient keys on the grid, `dnl_jax.analysis.saliency.salient_to_grid`), drawn in a last
    column beside the unary term. Missing terms leave their panels blank.
    Returns a matplotlib Figure (Agg).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_points = max(len(row["points"]) for row in rows)
    salient = any(row.get("salient") is not None for row in rows)
    columns = 3 + 2 * num_points + salient
    fig, axes = plt.subplots(
        len(rows),
        columns,
        squeeze=False,
        dpi=DPI,
        figsize=(columns * PANEL_INCHES, len(rows) * PANEL_INCHES),
    )
    cmap = _label_colours(num_classes)
    for r, row in enumerate(rows):
        shown = _display_image(row["image"])
        height, width = row["label"].shape
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        axes[r, 0].imshow(shown)
        axes[r, 0].set_title(row["title"], fontsize=8)
        axes[r, 1].imshow(
            np.ma.masked_equal(row["label"], IGNORE_LABEL),
            cmap=cmap,
            vmin=0,
            vmax=num_classes - 1,
            interpolation="nearest",
        )
        axes[r, 1].set_title("ground truth", fontsize=8)
        panels = [(2 + q, "full", q) for q in range(num_points)]
        panels += [(2 + num_points + q, "pairwise", q) for q in range(num_points)]
        panels.append((2 + 2 * num_points, "unary", 0))
        if salient:
            _salient_panel(axes[r, columns - 1], shown, row.get("salient"), extent)
        for column, term, q in panels:
            maps = row["maps"].get(term)
            if maps is None or q >= len(row["points"]):
                axes[r, column].axis("off")
                continue
            _overlay(axes[r, column], shown, maps[q].reshape(row["grid"]), extent)
            if term != "unary":
                point = row["points"][q]
                axes[r, column].plot(point[1], point[0], marker="*", color="red", markersize=9)
            axes[r, column].set_title(
                term if term == "unary" else f"{term}, query {q + 1}", fontsize=8
            )
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig


def _salient_panel(axis, shown: np.ndarray, salient, extent) -> None:
    """The salient keys' map `[h, w]` over the image (blank when the row has none)."""
    if salient is None:
        axis.axis("off")
        return
    _overlay(axis, shown, np.asarray(salient, np.float64), extent)
    axis.set_title("salient keys", fontsize=8)


def query_positions(label: np.ndarray, grid, count: int = 3) -> tuple[list, np.ndarray]:
    """(`query_pixels(label, count)`, their flat indices on the feature `grid`)."""
    points = query_pixels(label, count)
    return points, np.array([_grid_index(p, label.shape, grid) for p in points])


__all__ = [
    "decomposition_figure",
    "query_positions",
    "capture_attention",
    "attention_figure",
    "save_attention_figure",
    "query_pixels",
]
