"""The confirmatory claims: stated before any run of seeds 8–15, and their statistics.

Why a second set of claims. The exploratory record (seeds 0–7, `analysis_claims`, unchanged)
tested *correlations* with the salient map, and correlation is blind to scale: NL's implicit
unary map on the beacon scenes is almost flat (0.063 of its mass on the beacon cells, whose area
is 0.062), yet its tiny variations still correlate with the beacon. The share of attention *mass*
separated the heads there, but that reading came after the outcome. So it is tested here, on
fresh seeds nobody has looked at, with every statistic, test, correction and verdict rule fixed
in this file, committed before the first run of these seeds.

Runs: seeds 8–15 (`SEEDS`); heads NL, pairwise-only, unary-only and DNL (`HEADS`; no FCN); both
scene families with the recipe and budgets of the exploratory record (`STEPS`: beacon 1000 SGD
steps, regions 2000); the learning-speed curve every `CUE_EVERY` = 25 steps (50 before).

Primary statistics, on the decode-head block over the first 64 val scenes of the final
checkpoint (`dnl_jax.analysis.saliency`; for NL its implicit terms: the unary
softmax_j(s·μ_θᵀφ_j) and the whitened pairwise term):
- U, the unary term's share of attention mass on the cells that should be salient,
  Σ_j a_j t_j / Σ_j a_j: on the beacon scenes t = the beacon's area share of each cell
  ('unary@salient'); on the regions scenes t = the boundary cells, those with a 4-neighbour of
  another (majority-vote) label ('unary@boundary'), where the paper places the unary term;
- P, the pairwise term's share of mass on the cells of the query's own category
  ('pairwise@within'), per valid query, averaged over queries and images;
- steps to learn the cue (as in `analysis_claims`: first evaluation with the cue right on
  ≥ 90 % of the val objects; None if never), evaluated every 25 steps;
- final val mIoU.

Claims, per scene family; every comparison is paired by seed (same scenes, same initial trunk
draw), difference d_s = head − NL's value:
(A) the unary term takes more mass on its targets than NL's implicit unary term:
    U(unary-only) > U(NL) and U(DNL) > U(NL);
(B) the pairwise term takes more mass on the query's own category than NL's implicit pairwise
    term: P(pairwise-only) > P(NL) and P(DNL) > P(NL);
(C) DNL learns the cue in fewer steps than NL;
(D) unary-only is not worse than NL: mean final val mIoU difference > −0.01.

Tests, the exploratory record's exact paired tests:
- (A), (B), (D): exact one-sided sign-flip permutation test of the mean of d_s (all 2ⁿ sign
  patterns; (D) on d_s + 0.01); (C): one-sided sign test over seeds (DNL wins a seed when it
  learns at an earlier evaluation or learns while NL never does; ties dropped);
- a claim's p ('p for'): the largest p of its comparisons (intersection–union: the claim needs
  every comparison, so no correction is needed inside a claim);
- its p against ('p against'): k × the smallest p of its k comparisons in the opposite
  direction, at most 1 (any one reversed comparison refutes it; Bonferroni inside the claim).
  For (D) the opposite is "unary-only worse than NL by more than 0.01"; for (C) the sign test
  with wins and losses swapped;
- Holm's step-down correction over the four claims of a scene family, applied to the four
  'p for' and, separately, to the four 'p against' (a p that cannot be computed counts as 1);
- verdict per claim and family: **confirmed** when its Holm-adjusted p for < 0.05, **refuted**
  when its Holm-adjusted p against < 0.05, **cannot decide** otherwise; **not measured** when
  a head of the claim or NL has no run of the family;
- secondary, reported and not used for any verdict: Holm over all eight claims of both families.

Seeds: every comparison uses the seeds where both of its runs exist, and the record says how
many. The plan is 8 seeds per head whatever an interim outcome; with fewer seeds the verdicts are
labelled interim (the smallest possible p is 2⁻ⁿ, so n ≤ 5 cannot confirm anything).
"""

from __future__ import annotations

import numpy as np
from analysis_claims import mean_se, permutation_p, sign_test_p, value

SEEDS = tuple(range(8, 16))
HEADS = ("nl", "pairwise", "unary", "dnl")
STEPS = {"beacon": 1000, "regions": 2000}
CUE_EVERY = 25
NONINFERIORITY_MARGIN = 0.01
ALPHA = 0.05
UNARY_MEASURE = {"beacon": "unary@salient", "regions": "unary@boundary"}

CLAIMS = (
    {
        "id": "A",
        "text": "the unary term takes more attention mass on its targets (beacon cells; "
        "regions: boundary cells) than NL's implicit unary term",
        "measure": "unary mass",  # UNARY_MEASURE[scenes]
        "heads": ("unary", "dnl"),
        "test": "permutation",
        "margin": 0.0,
    },
    {
        "id": "B",
        "text": "the pairwise term takes more attention mass on the query's own category "
        "than NL's implicit pairwise term",
        "measure": "pairwise@within",
        "heads": ("pairwise", "dnl"),
        "test": "permutation",
        "margin": 0.0,
    },
    {
        "id": "C",
        "text": "DNL learns the cue in fewer steps than NL",
        "measure": "steps_to_learn",
        "heads": ("dnl",),
        "test": "sign",
        "margin": 0.0,
    },
    {
        "id": "D",
        "text": f"unary-only is not worse than NL (final val mIoU, margin {NONINFERIORITY_MARGIN})",
        "measure": "val_miou",
        "heads": ("unary",),
        "test": "permutation",
        "margin": NONINFERIORITY_MARGIN,
    },
)


def measure(claim: dict, scenes: str) -> str:
    """The statistic of `claim` on the scene family `scenes`."""
    return UNARY_MEASURE[scenes] if claim["measure"] == "unary mass" else claim["measure"]


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaN counts as 1)."""
    p = np.array([1.0 if x != x else float(x) for x in pvalues])
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def _pairs(records: list[dict], head: str, statistic: str) -> list[tuple]:
    """(seed, head's value, NL's value) for the seeds where both runs exist."""
    by_seed = {(r["head"], r["seed"]): r for r in records}
    seeds = sorted(s for h, s in by_seed if h == head and ("nl", s) in by_seed)
    return [
        (s, value(by_seed[head, s], statistic), value(by_seed["nl", s], statistic)) for s in seeds
    ]


def compare(records: list[dict], claim: dict, head: str, scenes: str) -> dict:
    """One comparison (head − NL) of `claim` on one family's `records`: the seeds, the paired
    differences per seed, their mean ± s.e., the one-sided p for the claim and against it."""
    pairs = _pairs(records, head, measure(claim, scenes))
    differences = {s: a - b for s, a, b in pairs if a is not None and b is not None}
    result = {"head": head, "reference": "nl", "seeds": [s for s, _, _ in pairs]}
    if claim["test"] == "sign":
        wins = sum(1 for _, a, b in pairs if a is not None and (b is None or a < b))
        losses = sum(1 for _, a, b in pairs if b is not None and (a is None or b < a))
        result.update(
            wins=wins,
            losses=losses,
            ties=len(pairs) - wins - losses,
            never_head=sum(a is None for _, a, _ in pairs),
            never_reference=sum(b is None for _, _, b in pairs),
            p_for=sign_test_p(wins, losses),
            p_against=sign_test_p(losses, wins),
        )
    else:
        d = list(differences.values())
        margin = claim["margin"]
        result.update(
            p_for=permutation_p(d, margin=margin),
            p_against=permutation_p([-x for x in d], margin=-margin),
        )
    result["differences"] = differences
    result["n"] = len(differences)
    result["mean"], result["se"] = mean_se(list(differences.values()))
    return result


def _claim_p(comparisons: list[dict]) -> tuple[float, float]:
    """(p for, p against) of a claim from its comparisons (module docstring); NaN if none."""
    p_for = [c["p_for"] for c in comparisons]
    p_against = [c["p_against"] for c in comparisons]
    if not comparisons or any(p != p for p in p_for):
        return float("nan"), float("nan")
    return max(p_for), min(1.0, len(p_against) * min(p_against))


def evaluate_family(records: list[dict], scenes: str) -> list[dict]:
    """Every claim on one family's `records`, Holm-corrected over the family's four claims."""
    results = []
    for claim in CLAIMS:
        comparisons = [compare(records, claim, head, scenes) for head in claim["heads"]]
        p_for, p_against = _claim_p(comparisons)
        results.append(
            {
                "id": claim["id"],
                "text": claim["text"],
                "measure": measure(claim, scenes),
                "test": claim["test"],
                "comparisons": comparisons,
                "measured": all(c["seeds"] for c in comparisons),
                "seeds": min((len(c["seeds"]) for c in comparisons), default=0),
                "p_for": p_for,
                "p_against": p_against,
            }
        )
    for key in ("p_for", "p_against"):
        for result, adjusted in zip(results, holm([r[key] for r in results]), strict=True):
            result[f"{key}_holm"] = adjusted
    for result in results:
        result["verdict"] = verdict(result)
    return results


def verdict(result: dict) -> str:
    """'confirmed', 'refuted', 'cannot decide' or 'not measured' (module docstring)."""
    if not result["measured"]:
        return "not measured"
    if result["p_for_holm"] < ALPHA:
        return "confirmed"
    if result["p_against_holm"] < ALPHA:
        return "refuted"
    return "cannot decide"


def evaluate(records: list[dict]) -> dict[str, list[dict]]:
    """{scenes: `evaluate_family`} for both families, each result with 'p_for_holm_all', the
    secondary Holm over all eight claims (reported, not used for the verdicts)."""
    results = {
        scenes: evaluate_family([r for r in records if r["scenes"] == scenes], scenes)
        for scenes in STEPS
    }
    everything = [r for scenes in STEPS for r in results[scenes]]
    for result, adjusted in zip(everything, holm([r["p_for"] for r in everything]), strict=True):
        result["p_for_holm_all"] = adjusted
    return results


def complete(results: list[dict]) -> bool:
    """Whether every comparison of a family has all the planned seeds (final, not interim)."""
    return all(len(c["seeds"]) == len(SEEDS) for r in results for c in r["comparisons"])
