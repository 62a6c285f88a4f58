"""The claims the analysis experiment tests, and their statistics, fixed before the runs.

Stated before any run of this version of the experiment (the scenes, recipe and budget are those
of the earlier records; nothing is tuned after seeing an outcome). Each claim is checked per
scene family ('beacon', 'regions') on the runs present, pairing runs of the same seed (same
scenes, same initial trunk draw):

(a) unary ↔ salient is higher for unary-only and for DNL than for NL's implicit unary term
    (statistic 'unary~salient' of the decode-head block, `dnl_jax.analysis.saliency`);
(b) pairwise ↔ within is higher for pairwise-only and for DNL than for NL's implicit pairwise
    term ('pairwise~within', `dnl_jax.analysis`);
(c) DNL learns the cue in fewer steps than NL (steps to learn the cue, below);
(d) unary-only is not worse than NL (the paper's observation): final val mIoU of unary-only
    minus NL's above −`NONINFERIORITY_MARGIN`.

Statistics, per comparison (head vs reference):
- the paired differences d_s = value(head, s) − value(reference, s) over the seeds s where both
  runs exist; their mean ± standard error (sample std / √n);
- (a), (b), (d): an exact one-sided sign-flip permutation test of the mean difference (all 2ⁿ
  sign patterns; p = share of patterns whose mean is at least the observed one in the claim's
  direction, the observed pattern included, so p ≥ 2⁻ⁿ). For (d) the test is on d_s + margin
  (non-inferiority: H0 mean ≤ −margin);
- (c): steps to learn are censored (a run that never learns has no number), so the test is a
  one-sided sign test over seeds: DNL wins a seed when it learns at an earlier evaluation than
  NL, or learns while NL never does; loses in the mirror cases; ties (same step, or neither
  learns) are dropped; p = P(Binomial(wins + losses, 1/2) ≥ wins). The mean ± s.e. of the
  difference is over the seeds where both learn, and the never-learning runs are counted apart.
A comparison "holds" when p < 0.05 in the claim's direction; a claim with two comparisons holds
when both do; otherwise it is "not shown" (which is not evidence against it). No correction for
testing several claims is applied: read p-values near 0.05 with that in mind.

Steps to learn the cue: the first evaluation (every 50 steps) at which the cue is right on
≥ `CUE_THRESHOLD` of the val objects (`dnl_jax.analysis.saliency.object_cue_accuracy`). Chosen
over an mIoU threshold because the cue is the one thing only the salient keys decide: mIoU mixes
it with shapes, colours and borders, and the mIoU a head has when it reads the cue differs by scene
family, so any mIoU threshold would have to be calibrated on outcomes. 90 %: a head that ignores
the cue is right on about half of the objects, one that reads it on nearly all.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

CUE_THRESHOLD = 0.9
NONINFERIORITY_MARGIN = 0.01  # mIoU; about two seed-to-seed stds of the heads' final mIoU
ALPHA = 0.05

CLAIMS = (
    {
        "id": "a",
        "text": "unary ↔ salient is higher for unary-only and DNL than for NL's implicit "
        "unary term",
        "measure": "unary~salient",
        "heads": ("unary", "dnl"),
        "reference": "nl",
        "test": "permutation",
        "margin": 0.0,
    },
    {
        "id": "b",
        "text": "pairwise ↔ within is higher for pairwise-only and DNL than for NL's "
        "implicit pairwise term",
        "measure": "pairwise~within",
        "heads": ("pairwise", "dnl"),
        "reference": "nl",
        "test": "permutation",
        "margin": 0.0,
    },
    {
        "id": "c",
        "text": "DNL learns the cue in fewer steps than NL",
        "measure": "steps_to_learn",
        "heads": ("dnl",),
        "reference": "nl",
        "test": "sign",
        "margin": 0.0,
    },
    {
        "id": "d",
        "text": f"unary-only is not worse than NL (final val mIoU, margin {NONINFERIORITY_MARGIN})",
        "measure": "val_miou",
        "heads": ("unary",),
        "reference": "nl",
        "test": "permutation",
        "margin": NONINFERIORITY_MARGIN,
    },
)


def value(record: dict, measure: str):
    """A run's value of `measure`: 'val_miou', 'steps_to_learn' (None: never learnt) or a
    statistic of its first (decode-head) block."""
    if measure in ("val_miou", "steps_to_learn"):
        return record.get(measure)
    blocks = record.get("analysis") or [{}]
    return blocks[0].get("means", {}).get(measure)


def permutation_p(
    differences, *, margin: float = 0.0, exact_up_to: int = 16, draws: int = 200_000
) -> float:
    """One-sided p of mean(d + margin) > 0 under random signs: exact over all 2ⁿ patterns for
    n ≤ `exact_up_to`, else `draws` random patterns (fixed seed); NaN for no difference."""
    d = np.asarray(differences, np.float64) + margin
    if d.size == 0:
        return float("nan")
    if d.size <= exact_up_to:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(draws, d.size))
    means = signs @ d / d.size
    return float(np.mean(means >= d.mean() - 1e-12))


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided P(Binomial(wins + losses, 1/2) ≥ wins); NaN when no seed decides."""
    n = wins + losses
    if n == 0:
        return float("nan")
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    se = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return float(values.mean()), float(se)


def compare(records: list[dict], claim: dict, head: str) -> dict:
    """The statistics of one comparison (module docstring) on `records` of one scene family."""
    by_seed = {(r["head"], r["seed"]): r for r in records}
    seeds = sorted(s for h, s in by_seed if h == head and (claim["reference"], s) in by_seed)
    pairs = [
        (
            s,
            value(by_seed[head, s], claim["measure"]),
            value(by_seed[claim["reference"], s], claim["measure"]),
        )
        for s in seeds
    ]
    result = {"head": head, "reference": claim["reference"], "seeds": seeds}
    if claim["test"] == "sign":
        both = [a - b for _, a, b in pairs if a is not None and b is not None]
        wins = sum(1 for _, a, b in pairs if a is not None and (b is None or a < b))
        losses = sum(1 for _, a, b in pairs if b is not None and (a is None or b < a))
        result.update(
            wins=wins,
            losses=losses,
            ties=len(pairs) - wins - losses,
            never_head=sum(a is None for _, a, _ in pairs),
            never_reference=sum(b is None for _, _, b in pairs),
            both_learn=len(both),
            p=sign_test_p(wins, losses),
        )
        result["mean"], result["se"] = mean_se(both)
    else:
        diffs = [a - b for _, a, b in pairs if a is not None and b is not None]
        result["mean"], result["se"] = mean_se(diffs)
        result.update(n=len(diffs), p=permutation_p(diffs, margin=claim["margin"]))
    result["holds"] = bool(result["p"] < ALPHA) if result["p"] == result["p"] else False
    return result


def evaluate(records: list[dict]) -> list[dict]:
    """Every claim on `records` (one scene family): {'id', 'text', 'comparisons', 'verdict'}
    with verdict 'holds', 'not shown' or 'not measured' (a head or the reference missing)."""
    results = []
    for claim in CLAIMS:
        comparisons = [compare(records, claim, head) for head in claim["heads"]]
        measured = all(c["seeds"] for c in comparisons)
        verdict = (
            "not measured"
            if not measured
            else "holds"
            if all(c["holds"] for c in comparisons)
            else "not shown"
        )
        results.append(
            {
                "id": claim["id"],
                "text": claim["text"],
                "measure": claim["measure"],
                "test": claim["test"],
                "comparisons": comparisons,
                "verdict": verdict,
            }
        )
    return results


def _number(x: float, digits: int, sign: str = "+") -> str:
    return "–" if x != x else f"{x:{sign}.{digits}f}"


def markdown(results: list[dict]) -> list[str]:
    """Markdown table of `evaluate`'s results: one row per comparison, then each verdict."""
    lines = [
        "| claim | comparison | seeds paired | paired difference mean ± s.e. | test | p "
        "(one-sided) | comparison holds |",
        "|---|---|---|---|---|---|---|",
    ]
    for claim in results:
        digits = 0 if claim["measure"] == "steps_to_learn" else 4
        for c in claim["comparisons"]:
            difference = f"{_number(c['mean'], digits)} ± {_number(c['se'], digits, '')}"
            if claim["test"] == "sign":
                test = (
                    f"sign test: {c['head']} earlier in {c['wins']}, later in {c['losses']}, "
                    f"ties {c['ties']}; never learnt: {c['head']} {c['never_head']}, "
                    f"{c['reference']} {c['never_reference']}; mean over the "
                    f"{c['both_learn']} seeds where both learn"
                )
            else:
                test = "sign-flip permutation (exact)"
            p = "–" if c["p"] != c["p"] else f"{c['p']:.4f}"
            lines.append(
                f"| ({claim['id']}) {claim['text']} | {c['head']} − {c['reference']} | "
                f"{len(c['seeds'])} | {difference} | {test} | {p} | "
                f"{'yes' if c['holds'] else 'no'} |"
            )
    lines.append("")
    lines += [f"- ({claim['id']}) {claim['text']}: **{claim['verdict']}**." for claim in results]
    return lines
