"""A captured block's attention maps, a chunk of queries at a time: the full attention and its
pairwise and unary terms (`attention_rows`; the package docstring states the decomposition)."""

from __future__ import annotations

import numpy as np

from dnl_jax.analysis.capture import BlockCapture
from dnl_jax.core import ops

TERMS = ("full", "pairwise", "unary")


def _softmax(logits) -> np.ndarray:
    return ops.host_softmax(np.asarray(logits, np.float32))


def attention_logits(capture: BlockCapture, queries: np.ndarray) -> dict[str, np.ndarray | None]:
    """Logits of the block's terms for the query positions `queries` (int `[n]`).

    Returns {'full': `[B, n, M]` (NL only: s·θ_iᵀφ_j), 'pairwise': `[B, n, M]`, 'unary':
    `[B, 1, M]`}, None for a term the block lacks. For NL, softmax(pairwise + unary) ==
    softmax(full) (`ops.decompose_nonlocal_logits`), computed on a chunk of queries: the whitened
    rows of the chunk use the means over all N queries.
    """
    logits = {"full": None, "pairwise": None, "unary": None}
    if capture.unary_logits is not None:
        logits["unary"] = capture.unary_logits[:, None, :]
    if capture.q is None:
        return logits
    q, k, scale = capture.q, capture.k, capture.scale
    chunk = q[:, queries]
    if capture.kind == "nl":
        logits["full"] = np.asarray(ops.nonlocal_logits(chunk, k, scale=scale))
        logits["unary"] = np.asarray(ops.unary_logits(q, k, scale=scale))
    if capture.whiten or capture.kind == "nl":
        centred_q = chunk - q.mean(axis=1, keepdims=True)
        logits["pairwise"] = np.asarray(
            ops.nonlocal_logits(centred_q, k - k.mean(axis=1, keepdims=True), scale=scale)
        )
    else:
        logits["pairwise"] = np.asarray(ops.nonlocal_logits(chunk, k, scale=scale))
    return logits


def attention_rows(capture: BlockCapture, queries: np.ndarray) -> dict[str, np.ndarray | None]:
    """Attention weights `[B, n, M]` of each term for the queries `queries` (rows sum to 1).

    'full' is what the block applies to its values: NL softmax(θᵀφ); DNL (pairwise + unary) / 2,
    or its one term when the other is switched off; GC its unary map. 'unary' is broadcast over
    the n queries. None for a term the block lacks.
    """
    logits = attention_logits(capture, queries)
    shape = (capture.unary_logits if capture.q is None else capture.q).shape[0], len(queries)
    rows = {}
    for term in ("pairwise", "unary"):
        rows[term] = (
            None
            if logits[term] is None
            else np.broadcast_to(_softmax(logits[term]), (*shape, int(np.prod(capture.key_grid))))
        )
    if logits["full"] is not None:
        rows["full"] = _softmax(logits["full"])
    else:
        present = [rows[t] for t in ("pairwise", "unary") if rows[t] is not None]
        rows["full"] = sum(present) / len(present)
    return rows
