"""The DNL paper's analysis of trained non-local blocks (Yin et al., ECCV 2020, Sec. 3).

For every non-local-family block of a model (`NonLocal` in 'embedded_gaussian' mode,
`DisentangledNonLocal`, `ContextBlock`), in heads or backbones, 2-D or 3-D, trained here or
converted from mmseg (same modules), `BlockCapturer` records the block's queries θ `[B, N, C']`,
keys φ `[B, M, C']` and unary logits `[B, M]` from one forward pass (`capture.py`), and the
functions of `decomposition.py` and `statistics.py` turn them into attention maps and statistics,
a chunk of queries at a time (never all N × M at once); all their names import from here:

- **Decomposition** (`attention_rows`). A plain `NonLocal` has the implicit terms of
  `dnl_jax.core.ops.decompose_nonlocal_logits`: a whitened pairwise softmax_j(s·(θ_i−μ_θ)ᵀ(φ_j−μ_φ))
  and a unary softmax_j(s·μ_θᵀφ_j), with softmax(pairwise + unary logits) equal to its full
  attention softmax_j(s·θ_iᵀφ_j). A `DisentangledNonLocal` has them explicitly: its pairwise
  softmax (temperature included) and softmax(conv_mask(x)); its full attention, the weights that
  multiply g, is their sum, reported halved so that it sums to 1 like the others. A
  `ContextBlock` has a unary term only.
- **Query-independence** (`query_independence`), GCNet's measure: the mean cosine distance
  1 − cos(a_i, a_i') between the attention maps of two different query positions, over all
  pairs of (valid) queries of an image, then over images. 0: every query sees the same map.
- **Consistency with ground truth** (`consistency`): labels taken to the block's grid (majority
  vote per cell, `labels_to_grid`); the within-category map of query i (1 where label_j equals
  label_i) and the boundary map (1 where a 4-neighbour cell has another label, `boundary_map`).
  The paper's exact statistic is not available to us; here it is the **Pearson correlation**
  between an attention map and a binary map over the valid keys, averaged over valid queries and
  images. Queries whose binary map is constant (no boundary in the image, or one label
  everywhere) have no correlation and are left out. Ignore pixels (255) are left out as queries
  and as keys.
"""

from dnl_jax import IGNORE_LABEL
from dnl_jax.analysis.capture import BLOCK_TYPES, BlockCapture, BlockCapturer
from dnl_jax.analysis.decomposition import TERMS, attention_logits, attention_rows
from dnl_jax.analysis.statistics import (
    CONSISTENCIES,
    BlockStatistics,
    accumulate,
    boundary_map,
    consistency,
    labels_to_grid,
    normalised_row_sum,
    pearson_rows,
    query_independence,
    query_independence_from_sum,
)

__all__ = [
    "BLOCK_TYPES",
    "BlockCapture",
    "BlockCapturer",
    "BlockStatistics",
    "IGNORE_LABEL",
    "attention_logits",
    "attention_rows",
    "labels_to_grid",
    "boundary_map",
    "pearson_rows",
    "normalised_row_sum",
    "query_independence",
    "query_independence_from_sum",
    "consistency",
    "accumulate",
    "CONSISTENCIES",
    "TERMS",
]
