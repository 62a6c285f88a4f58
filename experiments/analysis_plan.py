"""The plan of the analysis experiment and its saved runs (experiments/analysis_experiment.py).

`PLAN`: the two parts of the record, their seeds, heads per scene family and cue-curve step;
`run_specs` turns the command line into runs; a finished run is saved twice, in full (figure
maps included) under RUNS_DIR/records (`record_path`) and as a summary, the committed record of
the run, under OUT/analysis_runs (`summary_path`, `save_summaries`); `saved_record` finds either.
"""

from __future__ import annotations

import json
import os

import analysis_claims_confirmatory as confirmatory

HEADS = {
    "dnl": "dnl_tiny",
    "pairwise": "dnl_pairwise_tiny",
    "unary": "dnl_unary_tiny",
    "nl": "nl_tiny",
    "gc": "gc_tiny",
    "fcn": "fcn_tiny",
}
DEFAULT_HEADS = {"regions": "fcn,nl,pairwise,unary,dnl", "beacon": "fcn,nl,pairwise,unary,dnl"}
SMOKE_HEADS = {"regions": "nl", "beacon": "dnl"}  # 2 heads: the implicit and explicit terms
FOUR_HEADS = ",".join(confirmatory.HEADS)
# part: seeds, heads per family, steps between two points of the cue curve.
PLAN = {
    "exploratory": {
        "seeds": tuple(range(8)),
        "heads": {"beacon": "fcn," + FOUR_HEADS, "regions": FOUR_HEADS},
        "cue_every": 50,
    },
    "confirmatory": {
        "seeds": confirmatory.SEEDS,
        "heads": {"beacon": FOUR_HEADS, "regions": FOUR_HEADS},
        "cue_every": confirmatory.CUE_EVERY,
    },
}


def record_path(spec: dict) -> str:
    """Where a finished run's record is saved (a rerun skips the runs saved there)."""
    return os.path.join(
        spec["runs_dir"], "records", f"{spec['scenes']}_{spec['head']}_seed{spec['seed']}.json"
    )


def _spec(args, scenes: str, head: str, seed: int, cue_every: int, first_seed: int) -> dict:
    if head not in HEADS:
        raise SystemExit(f"unknown head {head!r}; choose from {sorted(HEADS)}.")
    return {
        "scenes": scenes,
        "head": head,
        "seed": seed,
        "steps": args.regions_steps if scenes == "regions" and args.regions_steps else args.steps,
        "num_images": args.num_images,
        "runs_dir": args.runs_dir,
        "cue_every": args.cue_every or cue_every,
        "cue_images": args.cue_images,
        "smoke": args.smoke,
        "first_seed": first_seed,  # the run that keeps figure maps
    }


def run_specs(args, part: str | None = None) -> list[dict]:
    """Every (scenes, head, seed) run of `--seeds` (heads: --<scenes>_heads) or else of the
    plan's `part` (default `--part`): family by family, seed-major so that seeds finish whole."""
    experiments = args.experiments.split(",")
    unknown = sorted(set(experiments) - set(DEFAULT_HEADS))
    if unknown:
        raise SystemExit(f"--experiments {unknown}: choose from {sorted(DEFAULT_HEADS)}.")
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
        defaults = SMOKE_HEADS if args.smoke else DEFAULT_HEADS
        heads = {f: getattr(args, f"{f}_heads") or defaults[f] for f in experiments}
        blocks = [(seeds, heads, 50)]
    else:
        part = part or args.part
        parts = list(PLAN) if part == "all" else [part]
        blocks = [(PLAN[p]["seeds"], PLAN[p]["heads"], PLAN[p]["cue_every"]) for p in parts]
    specs = []
    for scenes in experiments:
        for seeds, heads, cue_every in blocks:
            for seed in seeds:
                for head in heads[scenes].split(","):
                    specs.append(_spec(args, scenes, head, seed, cue_every, seeds[0]))
    return specs


def key(record: dict) -> tuple:
    return record["scenes"], record["head"], record["seed"]


def part_of(record: dict) -> str:
    """The part a run belongs to, by its seed."""
    return "confirmatory" if record["seed"] in confirmatory.SEEDS else "exploratory"


def in_part(records: list[dict], part: str, scenes: str | None = None) -> list[dict]:
    """The records (or planned runs) of `part`, of the scene family `scenes` when given."""
    return [r for r in records if part_of(r) == part and (scenes is None or r["scenes"] == scenes)]


def summary_path(out: str, spec: dict) -> str:
    return os.path.join(
        out, "analysis_runs", f"{spec['scenes']}_{spec['head']}_seed{spec['seed']}.json"
    )


def saved_record(spec: dict, out: str):
    """The saved record of a finished run of `spec` (same steps): RUNS_DIR's (with the figure
    maps), else OUT's summary; None if neither."""
    for path in (record_path(spec), summary_path(out, spec)):
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            if record["steps"] == spec["steps"]:
                return record
    return None


def save_summaries(out: str, records: list[dict]) -> None:
    """Writes each record's summary (no figure maps) to OUT/analysis_runs, only where it is new
    or differs, each file whole (written aside, then renamed)."""
    os.makedirs(os.path.join(out, "analysis_runs"), exist_ok=True)
    for record in records:
        path = summary_path(out, record)
        text = json.dumps(
            {k: v for k, v in record.items() if k != "figure_rows"}, indent=1, sort_keys=True
        )
        if os.path.exists(path):
            with open(path) as f:
                if f.read() == text:
                    continue
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
