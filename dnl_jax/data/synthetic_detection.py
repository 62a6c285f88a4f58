"""Embedded synthetic detection scenes: instances whose class only distant context decides.

The detection sibling of `synthetic.py`'s beacon scenes, deterministic from
`numpy.random.default_rng([seed, split, index])`. The S × S image is split into a 2 × 2 grid of
cells; one random cell holds the *beacon* (a black, cue 0, or white, cue 1, square), 1 to 3 of
the others hold one object each (a filled rectangle or ellipse in palette colour a, with a darker
outline, never touching another cell). An object's class is

    class = 2a + cue,

so an object's own pixels say only which two classes it may be; the beacon, in another cell,
decides. Example (G = MAX_OBJECTS instance slots, padded):

    image  f32 [S, S, 3] (normalised)      gt_boxes f32 [G, 4] (x1, y1, x2, y2), tight
    gt_labels i32 [G] in [0, 2·colours)    gt_masks u8 [G, S, S]     gt_valid bool [G]
    image_size f32 [2]                     image_id i32 []
"""

from __future__ import annotations

import numpy as np

from dnl_jax.data.synthetic import BACKGROUND_GREY, CUE_GREYS, SPLITS, palette

MAX_OBJECTS = 3


def _object_mask(rng: np.random.Generator, size: int, cell: tuple[int, int]) -> np.ndarray:
    """A rectangle or ellipse inside the given cell of the 2 × 2 grid (a 1-pixel margin kept)."""
    half = size // 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    extent_h, extent_w = rng.uniform(0.25, 0.45, size=2) * half
    cy = cell[0] * half + rng.uniform(extent_h + 1, half - extent_h - 1)
    cx = cell[1] * half + rng.uniform(extent_w + 1, half - extent_w - 1)
    if rng.random() < 0.5:
        return (np.abs(yy - cy) <= extent_h) & (np.abs(xx - cx) <= extent_w)
    return ((yy - cy) / extent_h) ** 2 + ((xx - cx) / extent_w) ** 2 <= 1.0


def _tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def draw_detection_scene(
    rng: np.random.Generator, size: int, colours: np.ndarray, noise: float, cue: int | None = None
) -> dict[str, np.ndarray]:
    """One scene (module docstring). `cue` forces the beacon without changing the layout."""
    drawn_cue = int(rng.integers(2))
    cue = drawn_cue if cue is None else cue
    cells = [(int(c) // 2, int(c) % 2) for c in rng.permutation(4)]
    beacon_cell, object_cells = cells[0], cells[1 : 1 + int(rng.integers(1, MAX_OBJECTS + 1))]
    rgb = np.repeat(BACKGROUND_GREY + 0.1 * rng.standard_normal((size, size, 1)), 3, -1)
    boxes = np.zeros((MAX_OBJECTS, 4), np.float32)
    labels = np.zeros(MAX_OBJECTS, np.int32)
    masks = np.zeros((MAX_OBJECTS, size, size), np.uint8)
    for slot, cell in enumerate(object_cells):
        mask = _object_mask(rng, size, cell)
        colour = int(rng.integers(len(colours)))
        rgb[mask] = colours[colour]
        inner = (
            np.pad(mask, 1)[:-2, 1:-1]
            & np.pad(mask, 1)[2:, 1:-1]
            & np.pad(mask, 1)[1:-1, :-2]
            & np.pad(mask, 1)[1:-1, 2:]
        )
        rgb[mask & ~inner] *= 0.5  # a darker outline
        boxes[slot], labels[slot], masks[slot] = _tight_box(mask), 2 * colour + cue, mask
    half, side = size // 2, max(2, size // 4)
    y = beacon_cell[0] * half + int(rng.integers(1, half - side))
    x = beacon_cell[1] * half + int(rng.integers(1, half - side))
    rgb[y : y + side, x : x + side] = CUE_GREYS[cue]
    rgb = rgb + noise * rng.standard_normal(rgb.shape)
    return {
        "image": ((rgb - 0.5) / 0.25).astype(np.float32),
        "gt_boxes": boxes,
        "gt_labels": labels,
        "gt_masks": masks,
        "gt_valid": np.arange(MAX_OBJECTS) < len(object_cells),
        "image_size": np.array([size, size], np.float32),
    }


class SyntheticDetection:
    """Random-access source of synthetic detection scenes (grain's `RandomAccessDataSource`).

    Args:
      num_examples; image_size S (a multiple of 32 for the detector, ≥ 16 here);
      num_colours: object colours (num_classes = 2 · num_colours); split 'train' | 'val'; seed;
      noise: per-pixel Gaussian noise before normalisation.
    """

    def __init__(
        self,
        num_examples: int,
        *,
        image_size: int = 64,
        num_colours: int = 2,
        split: str = "train",
        seed: int = 0,
        noise: float = 0.1,
    ):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; choose one of {tuple(SPLITS)}.")
        if image_size < 16 or num_colours < 1 or num_examples < 1:
            raise ValueError(
                f"need image_size >= 16, num_colours >= 1 and num_examples >= 1; "
                f"got {image_size}, {num_colours}, {num_examples}."
            )
        self.num_examples, self.image_size, self.split = num_examples, image_size, split
        self.seed, self.noise = seed, noise
        self.num_classes = 2 * num_colours
        self._palette = palette(num_colours)

    def __len__(self) -> int:
        return self.num_examples

    def _stream(self, index: int) -> np.random.Generator:
        """The example's own random stream; a bad index is an IndexError (grain's protocol)."""
        if index < 0 or index >= self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples.")
        return np.random.default_rng([self.seed, SPLITS[self.split], int(index)])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = draw_detection_scene(
            self._stream(index), self.image_size, self._palette, self.noise
        )
        return {**example, "image_id": np.int32(index)}


__all__ = ["SyntheticDetection", "draw_detection_scene", "MAX_OBJECTS"]
