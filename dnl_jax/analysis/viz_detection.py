"""The detection figure: for a few val images, the detector's boxes and masks beside the ground
truth, and the attention of the backbone's context block (the first one, e.g. at c4) for one
query position, the centre of the image's first ground-truth object.

    one row per image:  detections | pairwise attention (DNL / NL) | unary attention (DNL / GC)

Attention maps come from `dnl_jax.analysis.BlockCapturer` on `MaskRCNN.build` (the backbone
alone), drawn on the block's feature grid stretched over the image; the query is a white cross.
A model without a context block gets the detections column only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dnl_jax import analysis
from dnl_jax.models.detection import proposals
from dnl_jax.models.detection.mask_rcnn import MaskRCNN

PANEL_INCHES = 2.6
DPI = 100


def _display(image: np.ndarray) -> np.ndarray:
    """A normalised image stretched per channel to [0, 1] for drawing."""
    low = image.min(axis=(0, 1), keepdims=True)
    high = image.max(axis=(0, 1), keepdims=True)
    return (image - low) / np.maximum(high - low, 1e-6)


def _query(example: dict, grid: tuple[int, int], image_shape) -> tuple[int, tuple[float, float]]:
    """(flat index on `grid`, (y, x) pixel) of the centre of the first valid gt object, or of
    the image centre without one."""
    height, width = image_shape
    valid = np.asarray(example.get("gt_valid", ()), bool)
    if valid.any():
        x1, y1, x2, y2 = np.asarray(example["gt_boxes"])[np.argmax(valid)]
        y, x = (y1 + y2) / 2, (x1 + x2) / 2
    else:
        y, x = height / 2, width / 2
    row = min(int(y * grid[0] / height), grid[0] - 1)
    col = min(int(x * grid[1] / width), grid[1] - 1)
    return row * grid[1] + col, (y, x)


def _draw_detections(
    axis, image, outputs: dict, b: int, example: dict, score_threshold: float
) -> None:
    height, width = image.shape[:2]
    axis.imshow(image)
    keep = outputs["valid"][b] & (outputs["scores"][b] >= score_threshold)
    boxes = outputs["boxes"][b][keep]
    if len(boxes):
        masks = (
            np.asarray(proposals.paste_masks(outputs["masks"][b][keep], boxes, height, width))
            >= 0.5
        )
        overlay = np.zeros((height, width, 4))
        overlay[masks.any(0)] = (1.0, 0.2, 0.2, 0.45)
        axis.imshow(overlay)
    for box in np.asarray(example.get("gt_boxes", np.zeros((0, 4))))[
        np.asarray(example.get("gt_valid", ()), bool)
    ]:
        axis.add_patch(_rectangle(box, "lime", "--"))
    for box, label, score in zip(
        boxes, outputs["labels"][b][keep], outputs["scores"][b][keep], strict=False
    ):
        axis.add_patch(_rectangle(box, "red", "-"))
        axis.text(
            box[0],
            box[1],
            f"{int(label)}:{score:.2f}",
            color="white",
            fontsize=6,
            va="bottom",
            bbox=dict(facecolor="red", alpha=0.6, pad=0.5, linewidth=0),
        )


def _rectangle(box, colour: str, style: str):
    from matplotlib import patches

    x1, y1, x2, y2 = (float(v) for v in box)
    return patches.Rectangle(
        (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linestyle=style, linewidth=1.2
    )


def save_detection_figure(
    workdir: str,
    module: MaskRCNN,
    variables: Mapping,
    source: Any,
    *,
    num_images: int = 3,
    filename: str = "detections.png",
    score_threshold: float = 0.5,
) -> str | None:
    """Writes the figure (module docstring) of the first `num_images` examples of `source`
    (detection examples: 'image', 'image_size', optional padded 'gt_*') to
    `workdir/filename`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = [source[i] for i in range(min(num_images, len(source)))]
    if not examples:
        return None
    images = np.stack([e["image"] for e in examples]).astype(np.float32)
    sizes = np.stack([np.asarray(e["image_size"], np.float32) for e in examples])
    variables = dict(variables)
    outputs = jax.jit(lambda v, x, s: module.apply(v, x, s, train=False))(variables, images, sizes)
    outputs = {key: np.asarray(value) for key, value in outputs.items()}
    _, captures = analysis.BlockCapturer(module, method=MaskRCNN.build)(variables, images)
    capture = captures[0] if captures else None
    terms = (
        []
        if capture is None
        else [
            term
            for term, present in (
                ("pairwise", capture.q is not None),
                ("unary", capture.unary_logits is not None),
            )
            if present
        ]
    )
    columns = 1 + len(terms)
    figure, axes = plt.subplots(
        len(examples),
        columns,
        squeeze=False,
        figsize=(PANEL_INCHES * columns, PANEL_INCHES * len(examples)),
        dpi=DPI,
    )
    for b, example in enumerate(examples):
        display = _display(images[b])
        _draw_detections(axes[b, 0], display, outputs, b, example, score_threshold)
        axes[b, 0].set_title("detections (gt dashed)" if b == 0 else "", fontsize=8)
        if capture is not None:
            index, (y, x) = _query(example, capture.grid, display.shape[:2])
            rows = analysis.attention_rows(capture, np.array([index]))
            extent = (0, display.shape[1], display.shape[0], 0)
            for column, term in enumerate(terms, start=1):
                weights = rows[term][b, 0].reshape(capture.key_grid)
                axis = axes[b, column]
                axis.imshow(display.mean(-1), cmap="gray", vmin=0, vmax=1)
                axis.imshow(weights, cmap="jet", alpha=0.55, extent=extent, interpolation="nearest")
                axis.plot([x], [y], marker="+", color="white", markersize=10, markeredgewidth=2)
                if b == 0:
                    axis.set_title(f"{term} attention\n{capture.path}", fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    figure.tight_layout()
    path = os.path.join(workdir, filename)
    figure.savefig(path)
    plt.close(figure)
    return path


__all__ = ["save_detection_figure"]
