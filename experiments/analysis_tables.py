"""Tables of the analysis record (experiments/analysis_record.py) and its attention figure.

`family_section` is the Markdown of one scene family within one part of the record: the runs
present and missing, the claims (rendered by the caller), a per-seed table of the claims'
statistics, the saliency and mass table, the learning-speed table, the analysis tables and the
val mIoU of every run. `write_attention_figure` draws analysis_attention.png from the runs that
kept their figure maps. Every number in the Markdown comes from the records.
"""

from __future__ import annotations

import os

import analysis_claims
import numpy as np

from dnl_jax.cli.analyze import COLUMNS, SALIENCY_COLUMNS, format_value

HEAD_ORDER = ("fcn", "nl", "pairwise", "unary", "dnl", "gc")
FIGURE_HEADS = ("nl", "pairwise", "unary", "dnl")
FAMILIES = ("beacon", "regions")
SCENES = {
    "regions": "The 'regions' scenes (`dnl_jax/data/regions.py`, "
    "`config.data.synthetic.scenes='regions'`): "
    "textured grey background (class 0); two of three colours per scene, each on two "
    "objects in opposite halves of the image; a black or white marker inside only one "
    "of a colour's objects decides the class of both (1 + 2·colour + bit), so an "
    "unmarked object's class lies in its distant twin (a within-category relation); "
    "thin light lines where objects of different classes touch, darker outlines "
    "towards the background.",
    "beacon": "The beacon scenes (`dnl_jax/data/synthetic.py`, the `make demo` data): textured "
    "grey background (class 0); one black (class 1) or white (class 2) 16×16 beacon "
    "anywhere in the background; 1–3 objects in one of two colours a with darker "
    "outlines, class 3 + 2a + s with s = 1 if the beacon is white. A pixel's colour "
    "gives the pair of classes; only the distant beacon decides within the pair. (An "
    "earlier 32×32 version with the cue as a frame around the image gave no separation "
    "at all: the frame lies next to every pixel.)",
}
DEFINITIONS = """Columns of the analysis tables (`dnl_jax/analysis/__init__.py`), on the \
decode-head block's 8×8
feature grid, over the first val scenes (`analysed`), labels taken to the grid by majority vote:
- QI full / pairwise / unary: GCNet's query-independence, the mean cosine distance between the
  attention maps of two different query positions (0: the same map for every query). For NL the
  pairwise and unary terms are its implicit ones (softmax of the whitened and of the μ_qᵀk_j
  logits; softmax(pairwise + unary) = its attention); for DNL its explicit terms, and 'full' =
  (pairwise + unary) / 2, the weights applied to the values.
- pw~within, un~boundary, pw~boundary, un~within: Pearson correlation between the term's map and
  the binary within-category map of the query (1 where a key cell has the query cell's label) or
  the boundary map (1 where a 4-neighbour cell has another label), averaged over queries (queries
  with a constant binary map left out). The paper's exact consistency statistic is not available
  to us; this correlation is our stand-in. '–': the block has no such term.
"""
SALIENCY_DEFINITIONS = """Saliency columns (`dnl_jax/analysis/saliency.py`): the scene's \
salient keys (the beacon square; the markers) taken to the 8×8 grid as the salient share s_j of
each cell (area, not majority vote: an 8×8-pixel marker straddling four cells would have no majority
anywhere).
- un~salient: Pearson correlation between the unary map (DNL's and unary-only's explicit
  softmax(conv_mask), NL's implicit softmax_j(s·μ_θᵀφ_j)) and s over the keys, one value per
  image (1: the map is an increasing affine function of s; about 0: unrelated).
- pw~salient: the same for each query's pairwise map, averaged over queries (the crossed
  control: a query-dependent term need not follow s).
- un@salient, pw@salient: the share of the map's attention mass on salient cells,
  Σ_j a_j s_j / Σ_j a_j; salient area: Σ_j s_j / M, the share a uniform map puts there (chance).
- un@boundary: the unary map's share of mass on the boundary cells (a 4-neighbour cell has
  another label); boundary area: their share of the cells (chance). pw@within: each query's
  pairwise share of mass on the cells of its own label, averaged over queries; within area: that
  share for a uniform map (chance). (Runs analysed before these were added show '–'.)
"""


def learning_definition(cue_every) -> str:
    return f"""Learning speed: every {cue_every} steps the run's checkpoint segments the \
first 128 val scenes; an
object (a 4-connected region of one object class) has its *cue right* when more of its pixels are
predicted as its class than as the other class of its colour (which only the salient keys
decide). Steps to learn the cue = the first evaluation with the cue right on ≥
{analysis_claims.CUE_THRESHOLD:.0%} of the objects \
(`dnl_jax.analysis.saliency.steps_to_learn`); runs that
never get there are counted as 'never', not averaged in.
"""


def _by_head(records: list[dict]) -> dict[str, list[dict]]:
    heads = {}
    for record in sorted(records, key=lambda r: r["seed"]):
        heads.setdefault(record["head"], []).append(record)
    return {h: heads[h] for h in HEAD_ORDER if h in heads}


def _stats(values) -> tuple[float, float, float, float]:
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not len(values):
        return (np.nan,) * 4
    std = values.std(ddof=1) if len(values) > 1 else np.nan
    return values.mean(), std, values.min(), values.max()


def _fmt(value: float, digits: int = 4) -> str:
    """A number, or '–' for NaN (e.g. the std of a single seed)."""
    return "–" if np.isnan(value) else f"{value:.{digits}f}"


def miou_tables(records: list[dict]) -> list[str]:
    """Summary (mean, sample std, min, max, every seed) and per-run table of final val mIoU."""
    lines = [
        "| head | model | seeds | final val mIoU mean | std | min | max | every seed (final) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for head, runs in _by_head(records).items():
        mean, std, low, high = _stats(r["val_miou"] for r in runs)
        seeds = ", ".join(f"{r['seed']}: {r['val_miou']:.4f}" for r in runs)
        lines.append(
            f"| {head} | {runs[0]['model']} | {len(runs)} | {mean:.4f} | {_fmt(std)} | "
            f"{low:.4f} | {high:.4f} | {seeds} |"
        )
    lines += [
        "",
        "| head | seed | final val mIoU | best val mIoU | val mIoU by step | train wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for head, runs in _by_head(records).items():
        for r in runs:
            steps = ", ".join(
                f"{s}: {v:.3f}"
                for s, v in sorted(r["val_miou_by_step"].items(), key=lambda kv: int(kv[0]))
            )
            lines.append(
                f"| {head} | {r['seed']} | {r['val_miou']:.4f} | "
                f"{r['best_val_miou']:.4f} | {steps} | {r['train_wall_s']:.0f} |"
            )
    return lines


def _block_means(record: dict) -> dict:
    return record["analysis"][0]["means"] if record.get("analysis") else {}


def analysis_tables(records: list[dict], columns=COLUMNS) -> list[str]:
    """Mean ± std over seeds of every analysis column per head, then every run."""
    names = [name for name, _ in columns]
    header = ["| head | seeds | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    summary, per_run = (
        list(header),
        ["| head | seed | " + " | ".join(names) + " | analysed |", "|---" * (len(names) + 3) + "|"],
    )
    for head, runs in _by_head(records).items():
        runs = [r for r in runs if r.get("analysis")]
        if not runs:
            continue
        cells = []
        for _, key in columns:
            mean, std, _, _ = _stats(_block_means(r).get(key) for r in runs)
            cells.append(
                "–" if np.isnan(mean) else f"{format_value(key, mean)} ± {format_value(key, std)}"
            )
        summary.append(f"| {head} | {len(runs)} | " + " | ".join(cells) + " |")
        for r in runs:
            per_run.append(
                f"| {head} | {r['seed']} | "
                + " | ".join(format_value(key, _block_means(r).get(key)) for _, key in columns)
                + f" | {r['analysed_images']} |"
            )
    return summary + [""] + per_run


def learning_tables(records: list[dict]) -> list[str]:
    """Per head: runs that learn the cue, their steps to learn it, the final cue accuracy."""
    lines = [
        "| head | runs | learnt the cue | steps to learn: mean ± s.e. (learnt runs) | median "
        "| every seed (steps; – never) | final cue accuracy mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for head, runs in _by_head(records).items():
        steps = [r["steps_to_learn"] for r in runs if r.get("steps_to_learn") is not None]
        mean, se = analysis_claims.mean_se(steps)
        final = [r["cue_curve"][-1]["cue_accuracy"] for r in runs if r.get("cue_curve")]
        seeds = ", ".join(f"{r['seed']}: {r.get('steps_to_learn') or '–'}" for r in runs)
        lines.append(
            f"| {head} | {len(runs)} | {len(steps)} / {len(runs)} | {_fmt(mean, 0)} ± "
            f"{_fmt(se, 0)} | {_fmt(float(np.median(steps)) if steps else np.nan, 0)} | "
            f"{seeds} | {_fmt(_stats(final)[0], 3)} |"
        )
    steps = [e["step"] for e in next((r["cue_curve"] for r in records if r.get("cue_curve")), [])]
    shown = ", ".join(str(s) for s in steps[:2]) + (f", …, {steps[-1]}" if len(steps) > 2 else "")
    lines += [
        "",
        "Cue accuracy (share of val objects with the cue right) by step, every run:",
        "",
        f"| head | seed | cue accuracy at steps {shown} |",
        "|---|---|---|",
    ]
    for head, runs in _by_head(records).items():
        for r in runs:
            curve = " ".join(f"{e['cue_accuracy']:.2f}" for e in r.get("cue_curve", []))
            lines.append(f"| {head} | {r['seed']} | {curve} |")
    return lines


def present_runs(records: list[dict], planned: list[dict]) -> list[str]:
    """Exactly which planned runs are in the record, and which are not."""
    have = {(r["head"], r["seed"]) for r in records}
    lines = []
    for head in HEAD_ORDER:
        wanted = sorted({p["seed"] for p in planned if p["head"] == head})
        if not wanted:
            continue
        present = [s for s in wanted if (head, s) in have]
        missing = [s for s in wanted if (head, s) not in have]
        lines.append(
            f"- {head}: seeds {present or 'none'} present"
            + (f"; seeds {missing} NOT run (not in any number below)" if missing else "")
        )
    return lines


def _recipe(records: list[dict]) -> str:
    if not records:
        return "no run finished"
    r = records[0]["recipe"]
    return (
        f"{r['image_size']}×{r['image_size']} scenes, {r['num_classes']} classes, "
        f"{r['num_train']} train / {r['num_val']} val scenes, batch {r['batch_size']}, "
        f"{r['total_steps']} SGD steps, lr {r['lr']} poly"
    )


def family_section(
    scenes: str,
    records: list[dict],
    planned: list[dict],
    claim_lines: list[str],
    per_seed: list[str],
    *,
    level: str = "##",
) -> list[str]:
    """The Markdown of one scene family: `claim_lines` and `per_seed` come rendered."""
    sub = level + "#"
    cue_every = sorted({r["cue_curve"][0]["step"] for r in records if r.get("cue_curve")})
    lines = [
        f"{level} The {scenes} scenes",
        "",
        SCENES[scenes],
        "",
        f"Recipe: {_recipe(records)}.",
        "",
        f"{sub} Runs in this record",
        "",
    ]
    lines += present_runs(records, planned)
    if not records:
        return lines + ["", "No run of this family has finished: nothing is claimed for it."]
    lines += ["", f"{sub} The claims (stated before the runs)", ""] + claim_lines
    lines += ["", f"{sub} Per seed: the claims' statistics", ""] + per_seed
    lines += ["", f"{sub} Saliency and attention mass", "", SALIENCY_DEFINITIONS]
    lines += analysis_tables(records, SALIENCY_COLUMNS)
    lines += ["", f"{sub} Learning speed", ""]
    lines += [learning_definition(", ".join(map(str, cue_every)) or "?")]
    lines += learning_tables(records)
    lines += ["", f"{sub} Analysis of the decode head's block", "", DEFINITIONS]
    lines += analysis_tables(records)
    lines += ["", f"{sub} Val mIoU", ""] + miou_tables(records)
    return lines


ATTENTION_CAPTION = """`analysis_attention.png`: one val scene per family and part, the first \
seed's model of each head (NL, pairwise-only, unary-only, DNL) among the runs that kept their \
figure maps (those run since the last clean `--runs_dir`): image, ground truth, the full \
attention of three query pixels (red stars), their pairwise term, the unary term and, last, the \
scene's salient keys; each on the 8×8 grid stretched over the image, colours per panel. The \
earlier figure of the exploratory beacon runs (seed 0) is `analysis.png`.

![attention](analysis_attention.png)"""


def _figure_row(run: dict) -> dict:
    row = {
        k: (np.asarray(v) if isinstance(v, list) and k != "points" else v)
        for k, v in run["figure_rows"][0].items()
    }
    row["maps"] = {t: None if m is None else np.asarray(m) for t, m in row["maps"].items()}
    row["title"] = f"{run['scenes']}: {run['head']} (seed {run['seed']})"
    return row


def write_attention_figure(out: str, records: list[dict]) -> None:
    """analysis_attention.png from every run that kept its figure maps (the first seed of each
    part), family by family, seed by seed, head by head; nothing when none did."""
    kept = [r for r in records if r.get("figure_rows") and r["head"] in FIGURE_HEADS]
    kept.sort(key=lambda r: (FAMILIES.index(r["scenes"]), r["seed"], FIGURE_HEADS.index(r["head"])))
    if not kept:
        return
    import matplotlib.pyplot as plt

    from dnl_jax.analysis import viz

    fig = viz.decomposition_figure(
        [_figure_row(r) for r in kept], num_classes=kept[0]["recipe"]["num_classes"]
    )
    fig.savefig(os.path.join(out, "analysis_attention.png"), dpi=viz.DPI)
    plt.close(fig)


HEAD_NAMES = {
    "nl": "NL",
    "pairwise": "pairwise-only",
    "unary": "unary-only",
    "dnl": "DNL",
    "fcn": "FCN",
}
# The chance level of each mass statistic: the share a uniform map puts on the same cells.
CHANCE = {
    "unary@salient": "salient_area",
    "unary@boundary": "boundary_area",
    "pairwise@within": "within_area",
}


def _chance(records: list[dict], measure: str) -> float:
    """The mean chance level of a mass statistic over `records` (NaN for other statistics)."""
    values = [analysis_claims.value(r, CHANCE[measure]) for r in records if measure in CHANCE]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _claim_panel(axis, records: list[dict], claim: tuple, scenes: str) -> None:
    """One seed per line across the claim's heads; the chance level dashed."""
    cid, measure, heads = claim
    by_run = {(r["head"], r["seed"]): r for r in records}
    never = 0
    for seed in sorted({r["seed"] for r in records}):
        values = [
            analysis_claims.value(by_run[h, seed], measure) if (h, seed) in by_run else None
            for h in heads
        ]
        never += sum(v is None and (h, seed) in by_run for h, v in zip(heads, values, strict=True))
        ys = [np.nan if v is None else v for v in values]
        axis.plot(range(len(heads)), ys, "o-", color="grey", alpha=0.6, markersize=4)
    chance = _chance(records, measure)
    if chance == chance:
        axis.axhline(chance, linestyle="--", color="tab:red", linewidth=1)
    axis.set_xticks(range(len(heads)), [HEAD_NAMES[h] for h in heads], fontsize=8)
    extra = f" (never: {never})" if measure == "steps_to_learn" and never else ""
    axis.set_title(f"({cid}) {scenes}: {measure}{extra}", fontsize=9)
    axis.set_xlim(-0.5, len(heads) - 0.5)
    axis.ticklabel_format(axis="y", useOffset=False)
    if not records:
        axis.text(0.5, 0.5, "no run yet", transform=axis.transAxes, ha="center")


def part_figure(path: str, records: dict, claims: dict, *, title: str) -> None:
    """Each claim's statistic (rows) per scene family (columns), seed by seed: `records` and
    `claims` ((id, statistic, heads with NL first) per claim) keyed by family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(c) for c in claims.values())
    fig, axes = plt.subplots(
        rows, len(FAMILIES), figsize=(4.2 * len(FAMILIES), 2.6 * rows), squeeze=False
    )
    for col, scenes in enumerate(FAMILIES):
        for row, claim in enumerate(claims[scenes]):
            _claim_panel(axes[row, col], records[scenes], claim, scenes)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
