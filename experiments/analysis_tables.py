"""Records of experiments/analysis_experiment.py: JSON, Markdown tables and the figure.

`write_all(out, records, failures, context)` (re)writes, in `out`:
  analysis.json / analysis.md                   the 'regions' scenes: mIoU + analysis tables
  synthetic_ablation.json / synthetic_ablation.md   the 'beacon' scenes (the demo's ablation)
  analysis.png                                   seed-0 attention of each head on one val scene
Every number in the Markdown comes from the records; the "paper's claims" lines compare means.
"""

from __future__ import annotations

import json
import os

import numpy as np

from dnl_jax.analyze import COLUMNS, format_value

HEAD_ORDER = ("fcn", "nl", "pairwise", "unary", "dnl", "gc")
FIGURE_HEADS = ("nl", "pairwise", "unary", "dnl")
TITLES = {"regions": "Analysis of trained non-local blocks on the 'regions' scenes",
          "beacon": "Synthetic-scene ablation (beacon scenes): DNL vs FCN, NL, GC, pairwise-only, "
                    "unary-only"}
SCENES = {
    "regions": "The 'regions' scenes (`dnl_jax/data/regions.py`, `config.data.synthetic.scenes='regions'`): "
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
DEFINITIONS = """Columns of the analysis tables (`dnl_jax/analysis/__init__.py`), on the decode-head block's 8×8
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
    lines = ["| head | model | seeds | final val mIoU mean | std | min | max | every seed (final) |",
             "|---|---|---|---|---|---|---|---|"]
    for head, runs in _by_head(records).items():
        mean, std, low, high = _stats(r["val_miou"] for r in runs)
        seeds = ", ".join(f"{r['seed']}: {r['val_miou']:.4f}" for r in runs)
        lines.append(f"| {head} | {runs[0]['model']} | {len(runs)} | {mean:.4f} | {_fmt(std)} | "
                     f"{low:.4f} | {high:.4f} | {seeds} |")
    lines += ["", "| head | seed | final val mIoU | best val mIoU | val mIoU by step | train wall (s) |",
              "|---|---|---|---|---|---|"]
    for head, runs in _by_head(records).items():
        for r in runs:
            steps = ", ".join(f"{s}: {v:.3f}" for s, v in sorted(
                r["val_miou_by_step"].items(), key=lambda kv: int(kv[0])))
            lines.append(f"| {head} | {r['seed']} | {r['val_miou']:.4f} | "
                         f"{r['best_val_miou']:.4f} | {steps} | {r['train_wall_s']:.0f} |")
    return lines


def _block_means(record: dict) -> dict:
    return record["analysis"][0]["means"] if record.get("analysis") else {}


def analysis_tables(records: list[dict]) -> list[str]:
    """Mean ± std over seeds of every analysis column per head, then every run."""
    names = [name for name, _ in COLUMNS]
    header = ["| head | seeds | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    summary, per_run = list(header), ["| head | seed | " + " | ".join(names) + " | analysed |",
                                      "|---" * (len(names) + 3) + "|"]
    for head, runs in _by_head(records).items():
        runs = [r for r in runs if r.get("analysis")]
        if not runs:
            continue
        cells = []
        for _, key in COLUMNS:
            mean, std, _, _ = _stats(_block_means(r).get(key) for r in runs)
            cells.append("–" if np.isnan(mean) else
                         f"{format_value(key, mean)} ± {format_value(key, std)}")
        summary.append(f"| {head} | {len(runs)} | " + " | ".join(cells) + " |")
        for r in runs:
            per_run.append(f"| {head} | {r['seed']} | " + " | ".join(
                format_value(key, _block_means(r).get(key)) for _, key in COLUMNS)
                + f" | {r['analysed_images']} |")
    return summary + [""] + per_run


def _mean(records: list[dict], head: str, key: str) -> float:
    values = [(r["val_miou"] if key == "miou" else _block_means(r).get(key))
              for r in records if r["head"] == head]
    return _stats(values)[0]


def claims(records: list[dict]) -> list[str]:
    """The paper's qualitative claims, checked by comparing means over seeds (no test of
    significance: compare the differences with the std columns above)."""
    # (claim, statistic, heads, reference head): the claim holds when every head's mean is
    # above the reference's (for QI: NL's maps vary less between queries than theirs).
    checks = [("pairwise ↔ within-category higher for PNL and DNL than for NL",
               "pairwise~within", ("pairwise", "dnl"), "nl"),
              ("unary ↔ boundary higher for UNL and DNL than for NL",
               "unary~boundary", ("unary", "dnl"), "nl"),
              ("NL's attention nearly query-independent (QI full lower than PNL's and DNL's)",
               "query_independence/full", ("pairwise", "dnl"), "nl"),
              ("DNL ≥ NL in mIoU (ties count)", "miou", ("dnl",), "nl"),
              ("a context block helps: DNL > FCN in mIoU", "miou", ("dnl",), "fcn")]
    lines = []
    for text, key, heads, reference in checks:
        ref = _mean(records, reference, key)
        values = {h: _mean(records, h, key) for h in heads}
        if np.isnan(ref) or any(np.isnan(v) for v in values.values()):
            lines.append(f"- {text}: not measured in these runs.")
            continue
        holds = all(v > ref or ("≥" in text and v == ref) for v in values.values())
        numbers = ", ".join(f"{h} {v:.4g}" for h, v in values.items())
        lines.append(f"- {text}: {reference} {ref:.4g} vs {numbers} (means over seeds) → "
                     f"{'holds' if holds else 'does NOT hold'}.")
    return lines


def _recipe(records: list[dict]) -> str:
    if not records:
        return "no run finished"
    r = records[0]["recipe"]
    return (f"{r['image_size']}×{r['image_size']} scenes, {r['num_classes']} classes, "
            f"{r['num_train']} train / {r['num_val']} val scenes, batch {r['batch_size']}, "
            f"{r['total_steps']} SGD steps, lr {r['lr']} poly")


def markdown(scenes: str, records: list[dict], failures: list[dict], context: dict) -> str:
    devices = sorted({r["device"] for r in records}) or ["(no run finished)"]
    seeds = sorted({r["seed"] for r in records})
    lines = [f"# {TITLES[scenes]}", "",
             f"Generated by `experiments/analysis_experiment.py` (all numbers below come from its "
             f"records; rerun it to refresh). Ran on: {', '.join(devices)}; host {context['host']}; "
             f"{context['workers']} worker processes sharing the device; {len(records)} runs "
             f"(seeds {seeds}) in {context.get('elapsed_s', 0):.0f} s. **Exact values differ "
             "between machines** (a GPU and a CPU, or two GPUs, sum in different orders and a "
             "chaotic run such as the FCN's can end elsewhere), so compare means and spreads, not "
             "single seeds.", "",
             "Setup: the demo recipe (`dnl_jax.recipes.ablation.synthetic_config`: ResNet-V1c-18-D8 "
             f"trunk of width 8, decode head of width 16; {_recipe(records)}), "
             f"`config.data.synthetic.scenes='{scenes}'`; only the decode head and `config.seed` differ "
             "between runs. Final val mIoU = all val scenes after the last step.", "",
             "## The data", "", SCENES[scenes], "",
             "## Command", "", f"    {context['argv']}", "",
             "which, per run, is equivalent to (e.g.)", "",
             f"    {records[0]['command'] if records else ''}", "",
             "## Val mIoU", ""] + miou_tables(records)
    if any(r.get("analysis") for r in records):
        lines += ["", "## Analysis of the decode head's block", "", DEFINITIONS] + \
            analysis_tables(records) + ["", "## The paper's claims, checked on these runs", ""] + \
            claims(records)
    if scenes == "regions" and any(r.get("figure_rows") for r in records):
        lines += ["", "## Figure", "", "`analysis.png`: one val scene, seed " f"{seeds[0]}, one row "
                  "per head (NL, pairwise-only, unary-only, DNL): image, ground truth, the full "
                  "attention of three query pixels (red stars), their pairwise term, the unary "
                  "term; each on the 8×8 grid stretched over the image, colours per panel.", "",
                  "![analysis](analysis.png)"]
    if failures:
        lines += ["", "## Failed runs", ""] + [f"- {f['scenes']} {f['head']} seed {f['seed']}: "
                                               f"{f['error']}" for f in failures]
    return "\n".join(lines) + "\n"


def write_figure(out: str, records: list[dict]) -> None:
    rows = []
    for head in FIGURE_HEADS:
        for r in records:
            if r["head"] == head and r.get("figure_rows"):
                row = dict(r["figure_rows"][0])
                row["title"] = f"{head} (seed {r['seed']})"
                rows.append(row)
                break
    if not rows:
        return
    import matplotlib.pyplot as plt

    from dnl_jax.analysis import viz

    fig = viz.decomposition_figure(rows, num_classes=records[0]["recipe"]["num_classes"])
    fig.savefig(os.path.join(out, "analysis.png"), dpi=viz.DPI)
    plt.close(fig)


def write_all(out: str, records: list[dict], failures: list[dict], context: dict) -> None:
    """Rewrites the five record files of `out` from all records so far."""
    names = {"regions": "analysis", "beacon": "synthetic_ablation"}
    for scenes, name in names.items():
        chosen = [r for r in records if r["scenes"] == scenes]
        failed = [f for f in failures if f["scenes"] == scenes]
        if not chosen and not failed:
            continue
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump({"context": context, "failures": failed,
                       "runs": [{k: v for k, v in r.items() if k != "figure_rows"}
                                for r in chosen]}, f, indent=1)
        with open(os.path.join(out, f"{name}.md"), "w") as f:
            f.write(markdown(scenes, chosen, failed, context))
    write_figure(out, [r for r in records if r["scenes"] == "regions"])
