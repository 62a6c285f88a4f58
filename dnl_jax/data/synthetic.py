"""The embedded default dataset: procedural segmentation scenes, deterministic from a seed.

Each example is drawn on the fly from `numpy.random.default_rng([seed, split, index])`, so the
dataset needs no files, any index can be read at any time (a grain random-access source, which is
what makes the input pipeline's position checkpointable) and train/val never overlap.

A scene (`[S, S]`, S = image_size):
- a textured grey background (class 0);
- a frame of width max(1, S // 8) around the image whose grey level is the *global cue*
  s ∈ {0, 1} (dark or light); the frame itself is background;
- 1 to 3 filled rectangles or ellipses, each painted with one of K-1 palette colours a, with a
  darker outline (a salient boundary). An object's class is

      class = 1 + (a + s) mod (K - 1),

  so a pixel's colour says which two classes it may be, and only the distant frame decides
  between them: a model that sees the whole image (a global-context block) can be right
  everywhere, a purely local one at best half the time on objects.

Images are float32 `[S, S, 3]`, normalised to roughly zero mean and unit variance; labels int32
`[S, S]` in [0, K) (no ignore pixels; the pipeline pads evaluation batches with 255).
"""

from __future__ import annotations

import colorsys

import numpy as np

SPLITS = {"train": 0, "val": 1}
BACKGROUND_GREY = 0.45
CUE_GREYS = (0.1, 0.9)  # frame grey level for cue 0 and cue 1
MAX_OBJECTS = 3


def palette(num_object_classes: int) -> np.ndarray:
    """K-1 saturated, evenly spaced hues: float32 `[K-1, 3]` in [0, 1]."""
    hues = np.arange(num_object_classes) / num_object_classes
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 0.85) for h in hues], np.float32)


class SyntheticSegmentation:
    """Random-access source of synthetic scenes (grain's `RandomAccessDataSource` protocol).

    Args:
      num_examples: length of the split.
      image_size: S, images are `[S, S, 3]`.
      num_classes: K >= 2 (class 0 is background).
      split: 'train' or 'val' (disjoint random streams).
      seed: the dataset seed; same seed, split and index → same example, bit for bit.
      noise: std of the per-pixel Gaussian noise added before normalisation.
    """

    def __init__(self, num_examples: int, *, image_size: int = 32, num_classes: int = 5,
                 split: str = "train", seed: int = 0, noise: float = 0.1):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; choose one of {tuple(SPLITS)}.")
        if num_classes < 2 or image_size < 8 or num_examples < 1:
            raise ValueError(f"need num_classes >= 2, image_size >= 8 and num_examples >= 1; got "
                             f"{num_classes}, {image_size}, {num_examples}.")
        self.num_examples = num_examples
        self.image_size = image_size
        self.num_classes = num_classes
        self.split = split
        self.seed = seed
        self.noise = noise
        self._palette = palette(num_classes - 1)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples.")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        return draw_scene(rng, self.image_size, self._palette, self.noise)

    def __repr__(self) -> str:
        return (f"SyntheticSegmentation(n={self.num_examples}, S={self.image_size}, "
                f"K={self.num_classes}, split={self.split!r}, seed={self.seed})")


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random filled rectangle or ellipse: bool `[S, S]`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    half_h, half_w = rng.uniform(0.12, 0.3, size=2) * size
    cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    if rng.random() < 0.5:
        return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w)
    return ((yy - cy) / half_h) ** 2 + ((xx - cx) / half_w) ** 2 <= 1.0


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the object's boundary)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~interior


def draw_scene(rng: np.random.Generator, size: int, colours: np.ndarray,
               noise: float) -> dict[str, np.ndarray]:
    """One scene (see the module docstring): {'image': f32 [S,S,3], 'label': i32 [S,S]}."""
    num_object_classes = len(colours)
    cue = int(rng.integers(2))
    rgb = BACKGROUND_GREY + 0.1 * rng.standard_normal((size, size, 1)).astype(np.float32)
    rgb = np.repeat(rgb, 3, axis=-1)
    label = np.zeros((size, size), np.int32)
    frame = max(1, size // 8)
    inner = np.zeros((size, size), bool)
    inner[frame:-frame, frame:-frame] = True
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        mask = _shape_mask(rng, size) & inner
        colour_index = int(rng.integers(num_object_classes))
        rgb[mask] = colours[colour_index]
        rgb[_outline(mask)] *= 0.5  # a darker boundary
        label[mask] = 1 + (colour_index + cue) % num_object_classes
    rgb[~inner] = CUE_GREYS[cue]
    rgb = rgb + noise * rng.standard_normal(rgb.shape).astype(np.float32)
    image = ((rgb - 0.5) / 0.25).astype(np.float32)
    return {"image": image, "label": label}
