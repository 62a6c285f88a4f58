"""The confirmatory part's verdicts in words and tables, for the analysis record
(experiments/analysis_record.py): `summary`, the plain-words summary at the head of the record
(every confirmatory claim's verdict per scene family, its "In short" line starting with
SHORT_PREFIX, the exploratory part's outcome for context), and `confirmatory_markdown`, one
family's table of comparisons, p-values before and after Holm, and verdicts. Every number comes
from the claims' results (`analysis_claims_confirmatory.evaluate`).
"""

from __future__ import annotations

import analysis_claims_confirmatory as confirmatory
import analysis_tables
from analysis_plan import in_part

SHORT_PREFIX = "In short (confirmatory part, seeds 8–15): "
# A few words for each confirmatory claim (the "In short" line), the paper's claim behind it
# and how it is tested here.
SHORT_NAME = {
    "A": "the unary term on its targets",
    "B": "the pairwise term on the own category",
    "C": "DNL learning faster",
    "D": "unary-only as good as NL",
}
PAPER_CLAIM = {
    "A": (
        "the unary term models the keys that matter to every query",
        "unary mass on the {target} cells, unary-only and DNL vs NL",
    ),
    "B": (
        "the pairwise term models relations within a category",
        "pairwise mass on the query's own category, pairwise-only and DNL vs NL",
    ),
    "C": ("disentangling the terms speeds up learning", "steps to learn the cue, DNL vs NL"),
    "D": (
        "the unary term alone does about as well as NL",
        "final val mIoU, unary-only vs NL, margin 0.01",
    ),
}


def _p(x: float) -> str:
    return "–" if x != x else f"{x:.4f}"


def _difference(c: dict, digits: int) -> str:
    def number(x, sign="+"):
        return "–" if x != x else f"{x:{sign}.{digits}f}"

    return (
        f"{analysis_tables.HEAD_NAMES[c['head']]} − NL {number(c['mean'])} ± {number(c['se'], '')}"
    )


def confirmatory_markdown(results: list[dict]) -> list[str]:
    """One family's confirmatory claims: each comparison, then each claim's p before and after
    Holm and its verdict."""
    lines = [
        "| claim | comparison | seeds | paired difference mean ± s.e. | test | p for | p against |",
        "|---|---|---|---|---|---|---|",
    ]
    for claim in results:
        digits = 0 if claim["measure"] == "steps_to_learn" else 4
        for c in claim["comparisons"]:
            test = "sign-flip permutation (exact)"
            if claim["test"] == "sign":
                test = (
                    f"sign test: {c['head']} earlier in {c['wins']}, later in {c['losses']}, "
                    f"ties {c['ties']}; never learnt: {c['head']} {c['never_head']}, nl "
                    f"{c['never_reference']}; mean over the {c['n']} seeds where both learn"
                )
            lines.append(
                f"| ({claim['id']}) {claim['measure']} | {c['head']} − nl | {len(c['seeds'])} | "
                f"{_difference(c, digits)} | {test} | {_p(c['p_for'])} | {_p(c['p_against'])} |"
            )
    lines += [
        "",
        "| claim | seeds | p for | p for, Holm | p against | p against, Holm | "
        "p for, Holm over both families (secondary) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for claim in results:
        lines.append(
            f"| ({claim['id']}) {claim['text']} | {claim['seeds']} | {_p(claim['p_for'])} | "
            f"{_p(claim['p_for_holm'])} | {_p(claim['p_against'])} | "
            f"{_p(claim['p_against_holm'])} | {_p(claim['p_for_holm_all'])} | "
            f"**{claim['verdict']}** |"
        )
    return lines


def _verdict_phrase(claim: dict, complete: bool) -> str:
    comparisons = "; ".join(
        _difference(c, 0 if claim["measure"] == "steps_to_learn" else 3)
        for c in claim["comparisons"]
    )
    when = "" if complete else f", interim: {claim['seeds']} of 8 seeds"
    if claim["verdict"] == "not measured":
        return "**not measured** yet (a head it needs has no finished run)"
    return (
        f"**{claim['verdict']}** (Holm-adjusted p = {_p(claim['p_for_holm'])} for, "
        f"{_p(claim['p_against_holm'])} against{when}; {comparisons})"
    )


def summary(results: dict, exploratory: dict, records: list[dict], planned: list[dict]) -> list:
    """The plain-words summary: every confirmatory claim's verdict per family, the overall
    reading, and the exploratory part's outcome for context."""
    lines = [
        "**Summary.** The paper's claims, tested on fresh seeds 8–15 with the statistics, tests "
        "and correction stated before those runs (`experiments/analysis_claims_confirmatory.py`): "
        "one-sided exact paired tests against NL's implicit terms, Holm-adjusted over the four "
        "claims of each scene family; a claim is confirmed or refuted at adjusted p < 0.05 and "
        "otherwise undecided.",
        "",
    ]
    overall: dict[str, dict[str, list]] = {
        v: {} for v in ("confirmed", "refuted", "cannot decide", "not measured")
    }
    for scenes in analysis_tables.FAMILIES:
        done = len(in_part(records, "confirmatory", scenes))
        wanted = len(in_part(planned, "confirmatory", scenes))
        complete = confirmatory.complete(results[scenes])
        state = "final" if complete else "runs not finished: verdicts interim"
        lines.append(f"*{scenes.capitalize()} scenes* ({done} of {wanted} runs; {state}):")
        for claim in results[scenes]:
            overall[claim["verdict"]].setdefault(claim["id"], []).append(scenes)
            paper, tested = PAPER_CLAIM[claim["id"]]
            tested = tested.format(target="beacon" if scenes == "beacon" else "boundary")
            lines.append(
                f"- ({claim['id']}) {paper} ({tested}): " + _verdict_phrase(claim, complete)
            )
        lines.append("")
    lines.append(SHORT_PREFIX + "; ".join(_in_short(k, v) for k, v in overall.items()) + ".")
    lines += ["", "Exploratory part (seeds 0–7; the earlier record's claims, no correction):"]
    for scenes in analysis_tables.FAMILIES:
        claims = exploratory[scenes]
        lines.append(
            f"- {scenes}: "
            + ", ".join(f"({c['id']}) {c['verdict']}" for c in claims)
            + f" ({len(in_part(records, 'exploratory', scenes))} of "
            f"{len(in_part(planned, 'exploratory', scenes))} runs)"
        )
    return lines


def _in_short(verdict: str, claims: dict[str, list]) -> str:
    """'confirmed: (A) the unary term on its targets on beacon and regions, ...'"""
    named = [f"({c}) {SHORT_NAME[c]} on {' and '.join(f)}" for c, f in sorted(claims.items())]
    return f"{verdict}: {', '.join(named) or 'none'}"


__all__ = ["SHORT_PREFIX", "SHORT_NAME", "PAPER_CLAIM", "confirmatory_markdown", "summary"]
