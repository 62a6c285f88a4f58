"""The embedded default dataset: procedural segmentation scenes, deterministic from a seed.

Each example is drawn on the fly from `numpy.random.default_rng([seed, split, index])`, so the
dataset needs no files, any index can be read at any time (a grain random-access source, which is
what makes the input pipeline's position checkpointable) and train/val never overlap.

A scene (`[S, S]`, S = image_size) is built so that long-range context decides the labels:
- a textured grey background (class 0);
- 1 to 3 filled rectangles or ellipses, each painted with one of (K-3)/2 palette colours a, with
  a darker outline (a salient boundary);
- one small *beacon*: a black (cue s = 0) or white (s = 1) square of side max(2, S // 4) at a
  random place in the background, one pixel or more away from every object (an object is dropped
  when no such place is left). The beacon is labelled too, dark = class 1, light = class 2, so
  that reading it is a local matter and only carrying it across the image is left to learn.
An object's class is

    class = 3 + 2a + s,

so a pixel's colour says which two classes it may be, and only the beacon, wherever it is in the
image, decides between them. A single salient spot whose value every object needs is what the DNL
block's unary term (a softmax over positions of a 1x1 conv, i.e. attention pooling) reads in one
step; a purely convolutional head has to learn to carry it across the image.

Images are float32 `[S, S, 3]`, normalised to roughly zero mean and unit variance; labels int32
`[S, S]` in [0, K) (the pipeline pads evaluation batches with 255). With `ignore_fraction` f > 0,
one rectangle per label map of round(f·S²) pixels (up to rounding of its random aspect ratio)
at a random place is set to the ignore label 255, as padded crops of real data are; it is drawn
after the scene, so the scene itself is the same for every f.

The *salient keys* of a scene are the pixels whose content decides other pixels' classes: the
beacon square here (`salient_map(index)`, bool `[S, S]`; the analysis compares the unary
attention term with it, `dnl_jax.analysis.saliency`). It is drawn with the scene, not stored in the
examples the training pipeline reads.
"""

from __future__ import annotations

import colorsys

import numpy as np

SPLITS = {"train": 0, "val": 1}
BACKGROUND_GREY = 0.45
CUE_GREYS = (0.0, 1.0)  # beacon grey level for cue 0 and cue 1
MAX_OBJECTS = 3
BEACON_FRACTION = 0.25  # beacon side / image side
# Images are drawn in [0, 1] and normalised as (rgb - MEAN) / STD (the preprocessing record of a
# synthetic-scene checkpoint reads these, dnl_jax/inference/record.py).
NORMALISATION_MEAN = 0.5
NORMALISATION_STD = 0.25


def palette(num_colours: int) -> np.ndarray:
    """`num_colours` saturated, evenly spaced hues: float32 `[num_colours, 3]` in [0, 1]."""
    hues = np.arange(num_colours) / num_colours
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 0.85) for h in hues], np.float32)


class SyntheticSegmentation:
    """Random-access source of synthetic scenes (grain's `RandomAccessDataSource` protocol).

    Args:
      num_examples: length of the split.
      image_size: S, images are `[S, S, 3]`.
      num_classes: K, odd and >= 5 (class 0 background, 1 and 2 the dark and light beacon, then
        two classes per colour).
      split: 'train' or 'val' (disjoint random streams).
      seed: the dataset seed; same seed, split and index → same example, bit for bit.
      noise: std of the per-pixel Gaussian noise added before normalisation.
      ignore_fraction: fraction of each label map set to 255, as one random rectangle.
    """

    def __init__(
        self,
        num_examples: int,
        *,
        image_size: int = 32,
        num_classes: int = 5,
        split: str = "train",
        seed: int = 0,
        noise: float = 0.1,
        ignore_fraction: float = 0.0,
    ):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; choose one of {tuple(SPLITS)}.")
        if num_classes < 5 or num_classes % 2 == 0 or image_size < 8 or num_examples < 1:
            raise ValueError(
                f"need an odd num_classes >= 5 (background, two beacon classes, two "
                f"classes per colour), "
                f"image_size >= 8 and num_examples >= 1; got {num_classes}, "
                f"{image_size}, {num_examples}."
            )
        self.num_examples = num_examples
        self.image_size = image_size
        self.num_classes = num_classes
        self.split = split
        self.seed = seed
        self.noise = noise
        if not 0.0 <= ignore_fraction < 1.0:
            raise ValueError(
                f"config.data.synthetic.ignore_fraction={ignore_fraction!r} must be "
                "in [0, 1)"
                " (the fraction of each label map set to the ignore label)."
            )
        self.ignore_fraction = float(ignore_fraction)
        self._palette = palette((num_classes - 3) // 2)

    def __len__(self) -> int:
        return self.num_examples

    # Object classes come in cue pairs (first + 2a, first + 2a + 1) from this class on.
    first_object_class = 3

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """{'image': f32 `[S, S, 3]`, 'label': i32 `[S, S]`} of example `index`."""
        example, rng = self._draw_index(index)
        example.pop("salient")
        if self.ignore_fraction > 0:
            ignore_rectangle(rng, example["label"], self.ignore_fraction)
        return example

    def salient_map(self, index: int) -> np.ndarray:
        """bool `[S, S]`: the salient keys of example `index` (the beacon here, the markers of
        the 'regions' scenes), True where a pixel's content decides other pixels' classes."""
        return self._draw_index(index)[0]["salient"]

    def _draw_index(self, index: int) -> tuple[dict, np.random.Generator]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples.")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        return self.draw(rng), rng

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One scene from `rng`: {'image', 'label', 'salient'} (subclasses draw other scene
        families)."""
        return draw_scene(rng, self.image_size, self._palette, self.noise)

    def __repr__(self) -> str:
        return (
            f"SyntheticSegmentation(n={self.num_examples}, S={self.image_size}, "
            f"K={self.num_classes}, split={self.split!r}, seed={self.seed})"
        )


def ignore_rectangle(rng: np.random.Generator, label: np.ndarray, fraction: float) -> None:
    """Sets one rectangle of about `fraction` of the `[S, S]` label map to 255, in place: a
    random height h in [ceil(f·S), S], width round(f·S²/h), at a random place."""
    size = label.shape[0]
    area = fraction * size * size
    height = int(rng.integers(max(1, int(np.ceil(area / size))), size + 1))
    width = min(size, int(round(area / height)))
    top, left = (int(v) for v in rng.integers(0, (size - height + 1, size - width + 1)))
    label[top : top + height, left : left + width] = 255


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random filled rectangle or ellipse: bool `[S, S]`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    half_h, half_w = rng.uniform(0.12, 0.3, size=2) * size
    cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    if rng.random() < 0.5:
        return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w)
    return ((yy - cy) / half_h) ** 2 + ((xx - cx) / half_w) ** 2 <= 1.0


def _four_neighbours(mask: np.ndarray) -> list[np.ndarray]:
    """`mask` shifted by one pixel up, down, left and right (False shifted in at the edges)."""
    padded = np.pad(mask, 1, constant_values=False)
    return [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the object's boundary)."""
    return mask & ~np.logical_and.reduce(_four_neighbours(mask))


def _beacon_corner(
    rng: np.random.Generator, occupied: np.ndarray, side: int
) -> tuple[int, int] | None:
    """Top-left corner of a `side`-square beacon that keeps one pixel clear of `occupied`
    (random among the free places), or None if there is no such place."""
    size = occupied.shape[0]
    # The one-pixel margin: a beacon never touches an outline.
    grown = occupied | np.logical_or.reduce(_four_neighbours(occupied))
    # window[y, x]: pixels of `grown` under the square at (y, x) (a summed-area table).
    table = np.pad(grown.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    span = size - side + 1
    window = table[side:, side:] - table[:span, side:] - table[side:, :span] + table[:span, :span]
    free = np.argwhere(window == 0)
    if len(free) == 0:
        return None
    y, x = free[int(rng.integers(len(free)))]
    return int(y), int(x)


def draw_scene(
    rng: np.random.Generator, size: int, colours: np.ndarray, noise: float, cue: int | None = None
) -> dict[str, np.ndarray]:
    """One scene (see the module docstring): {'image': f32 [S,S,3], 'label': i32 [S,S],
    'salient': bool [S,S] (the beacon square)}.

    `cue` forces the beacon (0 dark, 1 light) without changing anything else the stream draws:
    the same `rng` state with either cue gives the same layout.
    """
    drawn_cue = int(rng.integers(2))
    cue = drawn_cue if cue is None else cue
    shapes = [
        (_shape_mask(rng, size), int(rng.integers(len(colours))))
        for _ in range(int(rng.integers(1, MAX_OBJECTS + 1)))
    ]
    side = max(2, int(size * BEACON_FRACTION))
    # Drop objects (last drawn first) until the beacon fits beside them; only a single object
    # too big for any free place (tiny images) lets the beacon cover part of it.
    while (corner := _beacon_corner(rng, np.any([m for m, _ in shapes], axis=0), side)) is None:
        if len(shapes) == 1:
            corner = tuple(int(v) for v in rng.integers(size - side + 1, size=2))
            break
        shapes.pop()
    rgb = BACKGROUND_GREY + 0.1 * rng.standard_normal((size, size, 1)).astype(np.float32)
    rgb = np.repeat(rgb, 3, axis=-1)
    label = np.zeros((size, size), np.int32)
    for mask, colour_index in shapes:
        rgb[mask] = colours[colour_index]
        rgb[_outline(mask)] *= 0.5  # a darker boundary
        label[mask] = 3 + 2 * colour_index + cue
    y, x = corner
    rgb[y : y + side, x : x + side] = CUE_GREYS[cue]
    label[y : y + side, x : x + side] = 1 + cue
    rgb = rgb + noise * rng.standard_normal(rgb.shape).astype(np.float32)
    image = ((rgb - NORMALISATION_MEAN) / NORMALISATION_STD).astype(np.float32)
    salient = np.zeros((size, size), bool)
    salient[y : y + side, x : x + side] = True
    return {"image": image, "label": label, "salient": salient}
