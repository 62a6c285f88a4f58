"""The analysis record in two parts, written from the saved runs (`write_all`).

    analysis.md                the summary (confirmed / refuted / cannot decide per claim and scene
                               family), how far the runs got, then part 1, exploratory (seeds 0–7,
                               the claims of `analysis_claims` as stated then) and part 2,
                               confirmatory (seeds 8–15, `analysis_claims_confirmatory`, p-values
                               before and after Holm); per family the claims, a per-seed table of
                               the claims' statistics and every table of `analysis_tables`
    analysis.json              every run (no figure maps), the plan, both parts' claims
    analysis_<part>.png        per part: each claim's statistic, seed by seed, per head and family
    analysis_attention.png     the first seed's attention maps, where a saved run kept them

Every number comes from the records. The summary sits between SUMMARY_START and SUMMARY_END so
that docs/analysis.md can quote it word for word, and its "In short" line between SHORT_START
and SHORT_END in the README (tests/analysis/test_analysis_experiment.py checks both). After
regenerating the record, refresh both quotes with

    python experiments/analysis_record.py experiments/results/analysis.md docs/analysis.md README.md
"""

from __future__ import annotations

import json
import os

import analysis_claims
import analysis_claims_confirmatory as confirmatory
import analysis_tables
import numpy as np

PARTS = ("exploratory", "confirmatory")
SUMMARY_START, SUMMARY_END = "<!-- summary: start -->", "<!-- summary: end -->"
SHORT_START, SHORT_END = "<!-- in short: start -->", "<!-- in short: end -->"
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


def part_of(record: dict) -> str:
    return "confirmatory" if record["seed"] in confirmatory.SEEDS else "exploratory"


def _in(records: list[dict], part: str, scenes: str | None = None) -> list[dict]:
    return [r for r in records if part_of(r) == part and (scenes is None or r["scenes"] == scenes)]


def progress(records: list[dict], planned: list[dict]) -> list[str]:
    """How far the runs got: finished of planned, per part, family and head, with the median
    training wall time of the finished runs (on the machine and load they ran under)."""
    walls = {(r["scenes"], r["head"], r["seed"]): r.get("train_wall_s") for r in records}
    lines = [
        "| part | scenes | head | finished / planned | seeds finished | median train wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for part in PARTS:
        for scenes in analysis_tables.FAMILIES:
            for head in analysis_tables.HEAD_ORDER:
                seeds = [p["seed"] for p in _in(planned, part, scenes) if p["head"] == head]
                if not seeds:
                    continue
                done = [s for s in seeds if (scenes, head, s) in walls]
                times = [walls[scenes, head, s] for s in done if walls[scenes, head, s]]
                wall = f"{np.median(times):.0f}" if times else "–"
                lines.append(
                    f"| {part} | {scenes} | {head} | {len(done)} / {len(seeds)} | "
                    f"{', '.join(map(str, done)) or 'none'} | {wall} |"
                )
    return lines


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


def claim_columns(part: str, scenes: str) -> list[tuple[str, str, tuple]]:
    """(claim id, statistic, heads with NL first) of each claim of `part` on `scenes`."""
    if part == "exploratory":
        return [(c["id"], c["measure"], ("nl", *c["heads"])) for c in analysis_claims.CLAIMS]
    return [
        (c["id"], confirmatory.measure(c, scenes), ("nl", *c["heads"])) for c in confirmatory.CLAIMS
    ]


def _cell(measure: str, value) -> str:
    if value is None or value != value:
        return "never" if measure == "steps_to_learn" else "–"
    return str(int(value)) if measure == "steps_to_learn" else f"{value:.4f}"


def per_seed_table(records: list[dict], part: str, scenes: str) -> list[str]:
    """Seed by seed, every head's value of each claim's statistic."""
    columns = [
        (cid, measure, head)
        for cid, measure, heads in claim_columns(part, scenes)
        for head in heads
    ]
    by_run = {(r["head"], r["seed"]): r for r in records}
    lines = [
        "| seed | " + " | ".join(f"({c}) {m}: {h}" for c, m, h in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for seed in sorted({r["seed"] for r in records}):
        cells = [
            _cell(m, analysis_claims.value(by_run[h, seed], m)) if (h, seed) in by_run else "–"
            for _, m, h in columns
        ]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
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
        SUMMARY_START,
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
        done = len(_in(records, "confirmatory", scenes))
        wanted = len(_in(planned, "confirmatory", scenes))
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
            + f" ({len(_in(records, 'exploratory', scenes))} of "
            f"{len(_in(planned, 'exploratory', scenes))} runs)"
        )
    return lines + [SUMMARY_END]


def _in_short(verdict: str, claims: dict[str, list]) -> str:
    """'confirmed: (A) the unary term on its targets on beacon and regions, ...'"""
    named = [f"({c}) {SHORT_NAME[c]} on {' and '.join(f)}" for c, f in sorted(claims.items())]
    return f"{verdict}: {', '.join(named) or 'none'}"


TITLE = "# The paper's claims on scenes whose salient keys we know"
HEADER = """Generated by `experiments/analysis_experiment.py` from the saved runs: the per-run \
summaries in `experiments/results/analysis_runs/` (committed) and any runs finished since in its \
`--runs_dir`. Every number below comes from them. Regenerate this record, figures and JSON with

    python experiments/analysis_experiment.py --report_only --out experiments/results

and run the missing runs (a rerun skips every saved run; a stopped one resumes) with

    python experiments/analysis_experiment.py --out experiments/results --workers 2 \\
        [--part exploratory|confirmatory] [--experiments beacon|regions]

**Exact values differ between machines** (a GPU and a CPU sum in different orders, and chaotic
runs such as the FCN's can end elsewhere): compare means and spreads, not single seeds.

Setup: the demo recipe (`dnl_jax.recipes.ablation.synthetic_config`: ResNet-V1c-18-D8 trunk of
width 8, decode head of width 16, batch 16, lr 0.1 poly); only the decode head, `config.seed`
and `config.data.synthetic.scenes` differ between runs; beacon runs 1000 steps, regions runs
2000."""


def part_section(part: str, records: list[dict], planned: list[dict], claims: dict) -> list:
    """The Markdown of one part: its claims as stated, then each scene family."""
    title, doc = (
        ("Part 1: exploratory (seeds 0–7)", analysis_claims.__doc__)
        if part == "exploratory"
        else ("Part 2: confirmatory (seeds 8–15)", confirmatory.__doc__)
    )
    source = "analysis_claims" if part == "exploratory" else "analysis_claims_confirmatory"
    lines = [
        f"## {title}",
        "",
        f"The claims and statistics as stated in `experiments/{source}.py`, committed before "
        "the first run of this part (see its git history), quoted:",
        "",
        "> " + doc.strip().replace("\n", "\n> "),
        "",
        f"![{part}](analysis_{part}.png)",
        "",
        f"`analysis_{part}.png`: each claim's statistic (rows) per scene family (columns), one "
        "line per seed across the heads of the claim; dashed: the chance level of a mass "
        "(the share a uniform map puts there); steps to learn: runs that never learn are left "
        "out and counted in the title.",
    ]
    if part == "exploratory":
        lines += [
            "",
            "The attention maps of the beacon runs of seed 0 (image, ground truth, the full "
            "attention of three query pixels, their pairwise term, the unary term, the salient "
            "keys; per head), drawn when those runs finished (their maps are not in the "
            "summaries, so `--report_only` keeps this file as it is): `analysis.png`.",
            "",
            "![exploratory attention maps](analysis.png)",
        ]
    for scenes in analysis_tables.FAMILIES:
        chosen, wanted = _in(records, part, scenes), _in(planned, part, scenes)
        if not (chosen or wanted):
            continue
        if part == "exploratory":
            claim_lines = analysis_claims.markdown(claims[scenes])
        else:
            claim_lines = confirmatory_markdown(claims[scenes])
        per_seed = per_seed_table(chosen, part, scenes) if chosen else []
        lines += [""] + analysis_tables.family_section(
            scenes, chosen, wanted, claim_lines, per_seed, level="###"
        )
    return lines


def markdown(records, failures, context, planned, claims) -> str:
    devices = sorted({r["device"] for r in records}) or ["(no run finished)"]
    lines = [TITLE, ""] + summary(claims["confirmatory"], claims["exploratory"], records, planned)
    lines += [
        "",
        HEADER,
        "",
        f"This file: {len(records)} of the {len(planned)} planned runs; ran on "
        f"{', '.join(devices)}; written by `{context['argv']}` (host {context['host']}).",
        "",
        "## How far the runs got",
        "",
    ]
    lines += progress(records, planned)
    for part in PARTS:
        lines += [""] + part_section(part, records, planned, claims[part])
    if os.path.exists(os.path.join(context.get("out", ""), "analysis_attention.png")):
        lines += ["", "## Attention maps", "", analysis_tables.ATTENTION_CAPTION]
    if failures:
        lines += ["", "## Failed runs", ""] + [
            f"- {f['scenes']} {f['head']} seed {f['seed']}: {f['error']}" for f in failures
        ]
    return "\n".join(lines) + "\n"


def write_all(out: str, records, failures, context, planned) -> None:
    """Rewrites the record of `out` (module docstring) from all records so far."""
    planned = [{k: p[k] for k in ("scenes", "head", "seed", "steps")} for p in planned]
    records = sorted(records, key=lambda r: (r["scenes"], r["seed"], r["head"]))
    claims = {
        "exploratory": {
            scenes: analysis_claims.evaluate(_in(records, "exploratory", scenes))
            for scenes in analysis_tables.FAMILIES
        },
        "confirmatory": confirmatory.evaluate(_in(records, "confirmatory")),
    }
    analysis_tables.write_attention_figure(out, records)
    context = {**context, "out": out}
    with open(os.path.join(out, "analysis.json"), "w") as f:
        json.dump(
            {
                "context": context,
                "planned": planned,
                "failures": failures,
                "claims": claims,
                "cue_threshold": analysis_claims.CUE_THRESHOLD,
                "runs": [{k: v for k, v in r.items() if k != "figure_rows"} for r in records],
            },
            f,
            indent=1,
        )
    with open(os.path.join(out, "analysis.md"), "w") as f:
        f.write(markdown(records, failures, context, planned, claims))
    for part in PARTS:
        analysis_tables.part_figure(
            os.path.join(out, f"analysis_{part}.png"),
            {scenes: _in(records, part, scenes) for scenes in analysis_tables.FAMILIES},
            {scenes: claim_columns(part, scenes) for scenes in analysis_tables.FAMILIES},
            title=f"{part} part: every seed",
        )


def quoted(record_text: str) -> tuple[str, str]:
    """(the summary, its "In short" line) of a record's Markdown."""
    body = record_text.split(SUMMARY_START)[1].split(SUMMARY_END)[0].strip()
    short = next(line for line in body.splitlines() if line.startswith(SHORT_PREFIX))
    return body, short


def _splice(text: str, start: str, end: str, quote: str) -> str:
    before, rest = text.split(start, 1)
    return before + start + "\n" + quote + "\n" + end + rest.split(end, 1)[1]


def quote_into(record_path: str, paths) -> None:
    """Replaces the quotes in `paths` (between the markers, module docstring) by the record's."""
    with open(record_path) as f:
        body, short = quoted(f.read())
    for path in paths:
        with open(path) as f:
            text = f.read()
        found = False
        for start, end, quote in (
            (SUMMARY_START, SUMMARY_END, body),
            (SHORT_START, SHORT_END, short),
        ):
            if start in text and end in text:
                text, found = _splice(text, start, end, quote), True
        if not found:
            raise SystemExit(f"{path}: no {SUMMARY_START} or {SHORT_START} marker to quote into.")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3:
        raise SystemExit("usage: python experiments/analysis_record.py RECORD.md FILE.md [...]")
    quote_into(sys.argv[1], sys.argv[2:])
