"""Where we know what is salient: the unary term against the keys that decide other pixels.

The DNL paper's claim is that the unary term models the *saliency* of a key, its impact on every
query. Our synthetic scenes put the salient keys there on purpose (`salient_map(index)` of
`dnl_jax.data.synthetic` and `dnl_jax.data.regions`): the beacon, whose grey decides the class
of every object, and the markers, each deciding both objects of its colour. This module compares
a block's attention terms (`dnl_jax.analysis.attention_rows`) with that map.

- **Salient map on the block's grid** (`salient_to_grid`): the fraction s_j ∈ [0, 1] of cell j's
  pixels that are salient (pixel row r falls in cell row r·h // H, as `labels_to_grid`). Labels
  take the majority vote; a salient square takes its area instead, because a marker of one cell's
  size straddling four cells holds no majority anywhere and would vanish.
- **Consistency** 'term~salient': the Pearson correlation between a term's map a_i (over the
  valid keys) and s, as `dnl_jax.analysis.consistency`: 1 when the map is an increasing affine
  function of s (e.g. equal to s, normalised), about 0 for an unrelated map. The unary term (one
  map per image, explicit or NL's implicit softmax_j(s·μ_θᵀφ_j)) gives one value per image; the
  pairwise and full terms one per valid query (the crossed control: a query-dependent map has no
  reason to follow s). Images whose s is constant over the valid keys are left out.
- **Mass** 'term@salient': the share of a map's attention on salient cells,
  Σ_j a_ij s_j / Σ_j a_ij over the valid keys (1: all of it on salient cells), and
  'salient_area' = Σ_j s_j / M_valid, the share a uniform map would put there (chance).
- **Mass on the ground-truth maps** (with labels; `accumulate_label_mass`): 'unary@boundary',
  the unary map's share on the boundary cells (`dnl_jax.analysis.boundary_map` of the key
  labels), next to its chance level 'boundary_area'; 'pairwise@within', each valid query's
  pairwise share on the cells of its own label, next to 'within_area' (that share for a uniform
  map). Mass, unlike correlation, sees scale: a nearly flat map that merely varies like the
  target correlates with it, yet puts only the chance share there.

The learning-speed measure of the synthetic experiment is here too (`object_cue_accuracy`): the
share of objects whose class is right within its cue pair, i.e. whose hidden bit the head read
from the salient keys.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from dnl_jax import analysis

# (term, statistic): Pearson correlation with s (~) and the share of attention mass on s (@).
SALIENCY_STATISTICS = (
    "unary~salient",
    "pairwise~salient",
    "full~salient",
    "unary@salient",
    "pairwise@salient",
    "full@salient",
    "salient_area",
)
# Attention mass on the ground-truth maps, and each one's chance level (needs labels).
LABEL_MASS_STATISTICS = ("unary@boundary", "boundary_area", "pairwise@within", "within_area")


def salient_to_grid(salient: np.ndarray, grid: tuple) -> np.ndarray:
    """bool `[B, H, W]` salient pixels → float64 `[B, h, w]`: the salient fraction of each cell
    (pixel row r in cell row r·h // H, column c in cell column c·w // W)."""
    salient = np.asarray(salient)
    if salient.ndim != 3 or len(grid) != 2:
        raise ValueError(
            f"salient_to_grid needs a salient map [B, H, W] and a 2-D grid; got "
            f"{salient.shape} and grid {tuple(grid)}."
        )
    batch, height, width = salient.shape
    if grid[0] > height or grid[1] > width:
        raise ValueError(f"grid {tuple(grid)} is finer than the salient map {salient.shape[1:]}.")
    rows = (np.arange(height) * grid[0]) // height
    cols = (np.arange(width) * grid[1]) // width
    sums, counts = np.zeros((batch, *grid)), np.zeros(tuple(grid))
    np.add.at(sums, (slice(None), rows[:, None], cols[None, :]), salient.astype(np.float64))
    np.add.at(counts, (rows[:, None], cols[None, :]), 1.0)
    return sums / counts


def salient_correlation(
    maps: np.ndarray, salient_keys: np.ndarray, valid_keys: np.ndarray
) -> np.ndarray:
    """Pearson correlation of each row of `maps` `[B, n, M]` with `salient_keys` `[B, M]` over
    the keys where `valid_keys` `[B, M]`: `[B, n]`, NaN where either is constant."""
    return analysis.pearson_rows(maps, salient_keys[:, None, :], valid_keys[:, None, :])


def salient_mass(maps: np.ndarray, salient_keys: np.ndarray, valid_keys: np.ndarray) -> np.ndarray:
    """Σ_j a_ij s_j / Σ_j a_ij over valid keys: `[B, n]`; NaN for images with no salient key."""
    return target_mass(maps, salient_keys[:, None, :], valid_keys)


def target_mass(maps: np.ndarray, targets: np.ndarray, valid_keys: np.ndarray) -> np.ndarray:
    """Σ_j a_ij t_ij / Σ_j a_ij over the valid keys, for maps `[B, n, M]`, targets t
    `[B, n | 1, M]` in [0, 1] and `valid_keys` `[B, M]`: `[B, n]`; NaN where no valid key has
    t > 0 (nothing to put mass on)."""
    weight = targets * valid_keys[:, None, :]
    mass = (maps * weight).sum(-1) / np.maximum((maps * valid_keys[:, None, :]).sum(-1), 1e-300)
    return np.where(weight.sum(-1) > 0, mass, np.nan)


def accumulate_label_mass(
    stats: analysis.BlockStatistics,
    capture: analysis.BlockCapture,
    labels: np.ndarray,
    *,
    ignore_label: int = analysis.IGNORE_LABEL,
    chunk: int = 1024,
) -> None:
    """Adds one batch's `LABEL_MASS_STATISTICS` (module docstring) to `stats`; `labels`
    `[B, H, W]`, taken to the query and key grids by majority vote (ignored cells left out)."""
    batch = len(labels)
    key_labels = analysis.labels_to_grid(labels, capture.key_grid, ignore_label=ignore_label)
    boundary = analysis.boundary_map(key_labels, ignore_label=ignore_label).reshape(batch, -1)
    key_labels = key_labels.reshape(batch, -1)
    valid_keys = key_labels != ignore_label
    count = np.maximum(valid_keys.sum(-1), 1)
    stats.add("boundary_area", np.where(valid_keys.any(-1), boundary.sum(-1) / count, np.nan))
    unary = analysis.attention_rows(capture, np.arange(1))["unary"]
    if unary is not None:
        stats.add("unary@boundary", target_mass(unary, boundary[:, None, :], valid_keys))
    if capture.q is None:
        return
    query_labels = analysis.labels_to_grid(labels, capture.grid, ignore_label=ignore_label)
    query_labels = query_labels.reshape(batch, -1)
    for start in range(0, query_labels.shape[1], chunk):
        queries = np.arange(start, min(start + chunk, query_labels.shape[1]))
        chunk_labels = query_labels[:, queries]
        keep = chunk_labels != ignore_label
        within = (key_labels[:, None, :] == chunk_labels[:, :, None]).astype(np.float64)
        area = (within * valid_keys[:, None, :]).sum(-1) / count[:, None]
        stats.add("within_area", np.where(keep, area, np.nan))
        pairwise = analysis.attention_rows(capture, queries)["pairwise"]
        if pairwise is not None:
            mass = target_mass(pairwise, within, valid_keys)
            stats.add("pairwise@within", np.where(keep, mass, np.nan))


def accumulate_saliency(
    stats: analysis.BlockStatistics,
    capture: analysis.BlockCapture,
    salient: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    ignore_label: int = analysis.IGNORE_LABEL,
    chunk: int = 1024,
) -> None:
    """Adds one batch's `SALIENCY_STATISTICS` (module docstring) to `stats`, and with
    `labels` the `LABEL_MASS_STATISTICS` (`accumulate_label_mass`).

    `salient` bool `[B, H, W]`; `labels` `[B, H, W]` (optional) mark the ignored pixels, which
    are left out as keys and queries. The unary map, the same for every query, is formed once per
    image; the pairwise and full rows `chunk` queries at a time.
    """
    batch = (capture.unary_logits if capture.q is None else capture.q).shape[0]
    salient_keys = salient_to_grid(salient, capture.key_grid).reshape(batch, -1)
    valid_keys = np.ones(salient_keys.shape, bool)
    num_queries = int(np.prod(capture.grid))
    valid_queries = np.ones((batch, num_queries), bool)
    if labels is not None:
        valid_keys = (
            analysis.labels_to_grid(labels, capture.key_grid, ignore_label=ignore_label).reshape(
                batch, -1
            )
            != ignore_label
        )
        valid_queries = (
            analysis.labels_to_grid(labels, capture.grid, ignore_label=ignore_label).reshape(
                batch, -1
            )
            != ignore_label
        )
    if labels is not None:
        accumulate_label_mass(stats, capture, labels, ignore_label=ignore_label, chunk=chunk)
    area = (salient_keys * valid_keys).sum(-1) / np.maximum(valid_keys.sum(-1), 1)
    stats.add("salient_area", np.where(valid_keys.any(-1), area, np.nan))
    unary = analysis.attention_rows(capture, np.arange(1))["unary"]
    if unary is not None:
        stats.add("unary~salient", salient_correlation(unary, salient_keys, valid_keys))
        stats.add("unary@salient", salient_mass(unary, salient_keys, valid_keys))
    if capture.q is None:
        return
    for start in range(0, num_queries, chunk):
        queries = np.arange(start, min(start + chunk, num_queries))
        rows = analysis.attention_rows(capture, queries)
        keep = valid_queries[:, queries]
        for term in ("pairwise", "full"):
            if rows[term] is None:
                continue
            correlation = salient_correlation(rows[term], salient_keys, valid_keys)
            stats.add(f"{term}~salient", np.where(keep, correlation, np.nan))
            stats.add(
                f"{term}@salient",
                np.where(keep, salient_mass(rows[term], salient_keys, valid_keys), np.nan),
            )


# ------------------------------------------------------------------------------ learning the cue
def cue_twin(classes: np.ndarray, first_object_class: int) -> np.ndarray:
    """The other class of each object class's cue pair (first + 2a + s ↔ first + 2a + 1 − s)."""
    classes = np.asarray(classes)
    return first_object_class + ((classes - first_object_class) ^ 1)


def object_cue_accuracy(
    predictions: np.ndarray, labels: np.ndarray, first_object_class: int
) -> tuple[int, int]:
    """(objects whose cue is right, objects) over a batch `[B, H, W]` of predicted and true labels.

    An object is a 4-connected component of pixels of one object class (class ≥
    `first_object_class`, not the ignore label). Its cue is right when more of its pixels are
    predicted as its class than as its cue twin (`cue_twin`): the head told the two classes of the
    object's colour apart, which only the salient keys decide. Pixels predicted as any other
    class vote for neither.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or labels.ndim != 3:
        raise ValueError(
            f"predictions {predictions.shape} and labels {labels.shape} must both be [B, H, W]."
        )
    right = total = 0
    for prediction, label in zip(predictions, labels, strict=False):
        for cls in np.unique(
            label[(label >= first_object_class) & (label != analysis.IGNORE_LABEL)]
        ):
            components, count = scipy.ndimage.label(label == cls)
            index = np.arange(1, count + 1)
            own = scipy.ndimage.sum_labels(prediction == cls, components, index)
            twin = scipy.ndimage.sum_labels(
                prediction == cue_twin(cls, first_object_class), components, index
            )
            right += int((own > twin).sum())
            total += count
    return right, total


def steps_to_learn(curve: dict, threshold: float = 0.9) -> int | None:
    """The first step of `curve` ({step: share of objects with the right cue}) at which the share
    is ≥ `threshold`, or None when it never is."""
    for step in sorted(curve, key=int):
        if curve[step] >= threshold:
            return int(step)
    return None


__all__ = [
    "SALIENCY_STATISTICS",
    "salient_to_grid",
    "salient_correlation",
    "salient_mass",
    "target_mass",
    "accumulate_label_mass",
    "LABEL_MASS_STATISTICS",
    "accumulate_saliency",
    "cue_twin",
    "object_cue_accuracy",
    "steps_to_learn",
]
