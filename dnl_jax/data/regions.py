"""The 'regions' synthetic scenes: both of the DNL paper's clues matter
(`config.data.synthetic.scenes='regions'`).

A scene (`[S, S]`, S = image_size, K = num_classes classes, P = (K - 1) / 2 palette colours):
- a textured grey background (class 0);
- 2 colours a (of the P) each painted on 2 objects (filled rectangles or ellipses), the two of a
  colour drawn in opposite halves of the image (left/right or top/bottom), so they lie far apart;
  objects may overlap (marked ones, below, are drawn last);
- each colour has a hidden bit s_a, shown by a *marker* (a black, s_a = 0, or white, s_a = 1,
  square of side max(2, S // 8)) inside ONE of its two objects only;
- every pixel of both objects of colour a, marker included, is class 1 + 2a + s_a;
- a thin light line (1 pixel) wherever two objects of different classes touch, and a darker
  outline on every object's edge towards the background.

So an unmarked object's class is decided by the other object of the same colour, far away: a
query must gather the evidence of *its own category's* region (query-dependent, what the
whitened pairwise term models), while the thin salient interfaces between touching regions are
what the paper finds the unary term attending to. Reading a marker is local (it lies inside the
object it labels); carrying it to the distant twin is the long-range part a plain convolutional
head must learn with its receptive field alone.

Images float32 `[S, S, 3]` normalised like `dnl_jax.data.synthetic`; labels int32 `[S, S]` in
[0, K), no ignore pixels. Deterministic from (seed, split, index), as the beacon scenes. The
salient keys (`salient_map(index)`) are the marker squares: each decides both objects of its colour.
"""

from __future__ import annotations

import numpy as np

from dnl_jax.data import synthetic

COLOURS_PER_SCENE = 2
OBJECTS_PER_COLOUR = 2
MARKER_FRACTION = 0.125  # marker side / image side
INTERFACE_GREY = 0.95


class RegionScenes(synthetic.SyntheticSegmentation):
    """Random-access source of 'regions' scenes; same arguments and protocol as
    `SyntheticSegmentation` (num_classes odd and >= 5 gives P = (K - 1) / 2 >= 2 colours)."""

    first_object_class = 1

    def __init__(self, num_examples: int, **kwargs):
        super().__init__(num_examples, **kwargs)
        self._palette = synthetic.palette((self.num_classes - 1) // 2)

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return draw_regions(rng, self.image_size, self._palette, self.noise)

    def __repr__(self) -> str:
        return "Region" + super().__repr__()


def _object_in_half(rng: np.random.Generator, size: int, half: int, vertical: bool) -> np.ndarray:
    """A filled rectangle or ellipse (bool `[S, S]`) centred in half `half` (0 or 1) of the
    image, split left/right (`vertical`) or top/bottom."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    half_h, half_w = rng.uniform(0.12, 0.25, size=2) * size
    along = rng.uniform(0.15, 0.35) + 0.5 * half  # the split axis: inside the chosen half
    across = rng.uniform(0.2, 0.8)
    cy, cx = (across, along) if vertical else (along, across)
    cy, cx = cy * size, cx * size
    if rng.random() < 0.5:
        return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w)
    return ((yy - cy) / half_h) ** 2 + ((xx - cx) / half_w) ** 2 <= 1.0


def _marker_corner(rng: np.random.Generator, visible: np.ndarray, side: int):
    """Top-left corner of a `side`-square lying inside `visible` (random among such places), or
    the square around the visible part's middle pixel when none fits."""
    size = visible.shape[0]
    table = np.pad(visible.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    span = size - side + 1
    inside = (
        table[side:, side:] - table[:span, side:] - table[side:, :span] + table[:span, :span]
    ) == side * side
    places = np.argwhere(inside)
    if len(places):
        y, x = places[int(rng.integers(len(places)))]
        return int(y), int(x)
    rows, cols = np.nonzero(visible)
    middle = len(rows) // 2

    def clip(v):
        return int(np.clip(v - side // 2, 0, size - side))

    return clip(rows[middle]), clip(cols[middle])


def draw_regions(
    rng: np.random.Generator, size: int, colours: np.ndarray, noise: float
) -> dict[str, np.ndarray]:
    """One 'regions' scene (module docstring): {'image': f32 [S,S,3], 'label': i32 [S,S],
    'salient': bool [S,S] (the marker squares)}."""
    chosen = rng.choice(len(colours), size=COLOURS_PER_SCENE, replace=False)
    bits = rng.integers(2, size=COLOURS_PER_SCENE)
    objects = []  # (mask, colour index, class, carries the marker)
    for colour, bit in zip(chosen, bits, strict=False):
        vertical, marked = bool(rng.integers(2)), int(rng.integers(OBJECTS_PER_COLOUR))
        for half in range(OBJECTS_PER_COLOUR):
            objects.append(
                (
                    _object_in_half(rng, size, half, vertical),
                    int(colour),
                    1 + 2 * int(colour) + int(bit),
                    half == marked,
                )
            )
    # Overlaps: unmarked objects first, then marked ones, each in random order, so that no
    # marker is covered (every class stays decidable).
    marked_last = sorted(rng.permutation(len(objects)), key=lambda i: objects[i][3])
    rgb = synthetic.BACKGROUND_GREY + 0.1 * rng.standard_normal((size, size, 1)).astype(np.float32)
    rgb = np.repeat(rgb, 3, axis=-1)
    label = np.zeros((size, size), np.int32)
    owner = np.full((size, size), -1)
    for index in marked_last:
        mask, colour, cls, _ = objects[index]
        rgb[mask] = colours[colour]
        label[mask] = cls
        owner[mask] = index
    side = max(2, int(size * MARKER_FRACTION))
    salient = np.zeros((size, size), bool)
    for index, (_, _, cls, marked) in enumerate(objects):
        if marked and np.any(owner == index):
            y, x = _marker_corner(rng, owner == index, side)
            rgb[y : y + side, x : x + side] = synthetic.CUE_GREYS[(cls - 1) % 2]
            label[y : y + side, x : x + side] = cls
            salient[y : y + side, x : x + side] = True
    foreground = label > 0
    rgb[synthetic._outline(foreground)] *= 0.5  # darker edge towards the background
    rgb[_interfaces(label)] = INTERFACE_GREY
    rgb = rgb + noise * rng.standard_normal(rgb.shape).astype(np.float32)
    return {"image": ((rgb - 0.5) / 0.25).astype(np.float32), "label": label, "salient": salient}


def _interfaces(label: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another foreground class: bool `[S, S]`."""
    padded = np.pad(label, 1, constant_values=0)
    neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
    return np.logical_or.reduce([(n > 0) & (n != label) for n in neighbours]) & (label > 0)


__all__ = ["RegionScenes", "draw_regions"]
