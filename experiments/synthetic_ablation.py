"""Runs the synthetic-scene ablation (same data, recipe and steps; only the decode head differs)
and records each run's final val mIoU, wall time and exact command.

    python experiments/synthetic_ablation.py [--heads dnl,fcn,...] [--seeds 0,1,...] \
        [--runs_dir runs/ablation]

`--seeds` sets `config.seed` (parameter initialisation, dropout and the training order); the
data (`config.data.seed`) stay the same for every run.

The record experiments/results/synthetic_ablation.* is now written by
experiments/analysis_experiment.py (5 seeds, all heads, with the analysis of each block); this
runner remains for single runs on a CPU. Each head is a separate
`python -m dnl_jax.cli.train` process (compilation included in its wall time), run one after
another. Writes
experiments/results/synthetic_ablation.json; `--table` prints the Markdown tables of
experiments/results/synthetic_ablation.md from it (no training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

from dnl_jax.recipes.ablation import SYNTHETIC_ABLATION_MODELS
from dnl_jax.train import logs

RESULTS = os.path.join("experiments", "results", "synthetic_ablation.json")


def run_head(head: str, seed: int, runs_dir: str) -> dict:
    """Trains + evaluates `synthetic_{head}_tiny.py` in a fresh workdir; returns its record."""
    workdir = os.path.join(runs_dir, f"{head}_seed{seed}")
    shutil.rmtree(workdir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.train",
        "--config",
        f"experiments/configs/synthetic_{head}_tiny.py",
        "--workdir",
        workdir,
        "--config.progress_bar=False",
        f"--config.seed={seed}",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    val = [r for r in logs.read_metrics(workdir) if r["split"] == "val"]
    final = max(val, key=lambda r: r["step"])
    return {
        "head": head,
        "seed": seed,
        "model": SYNTHETIC_ABLATION_MODELS[head],
        "step": final["step"],
        "val_miou": final["miou"],
        "best_val_miou": max(r["miou"] for r in val),
        "val_miou_by_step": {r["step"]: r["miou"] for r in val},
        "wall_s": round(wall, 1),
        "command": " ".join(["python"] + command[1:]),
    }


def markdown_tables(runs: list[dict]) -> str:
    """Per-run table and per-head summary (mean ± std over seeds) in Markdown."""
    lines = [
        "| head | model | seed | final val mIoU | best val mIoU | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    runs = sorted(runs, key=lambda r: (list(SYNTHETIC_ABLATION_MODELS).index(r["head"]), r["seed"]))
    for r in runs:
        lines.append(
            f"| {r['head']} | {r['model']} | {r.get('seed', 0)} | {r['val_miou']:.4f} | "
            f"{r['best_val_miou']:.4f} | {r.get('wall_s', r.get('train_wall_s', 0)):.0f} |"
        )
    lines += [
        "",
        "| head | seeds | final val mIoU mean | std | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for head in SYNTHETIC_ABLATION_MODELS:
        values = np.array([r["val_miou"] for r in runs if r["head"] == head])
        if len(values):
            lines.append(
                f"| {head} | {len(values)} | {values.mean():.4f} | "
                f"{values.std(ddof=1) if len(values) > 1 else float('nan'):.4f} | "
                f"{values.min():.4f} | {values.max():.4f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heads", default=",".join(SYNTHETIC_ABLATION_MODELS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runs_dir", default=os.path.join("runs", "ablation"))
    parser.add_argument("--table", action="store_true", help="print the tables and exit")
    args = parser.parse_args()
    if args.table:
        with open(RESULTS) as f:
            print(markdown_tables(json.load(f)["runs"]))
        return
    heads = args.heads.split(",")
    unknown = sorted(set(heads) - set(SYNTHETIC_ABLATION_MODELS))
    if unknown:
        raise ValueError(
            f"unknown head(s) {unknown}; choose from {list(SYNTHETIC_ABLATION_MODELS)}."
        )
    for seed in [int(s) for s in args.seeds.split(",")]:
        for head in heads:
            record = run_head(head, seed, args.runs_dir)
            print(json.dumps({k: v for k, v in record.items() if k != "val_miou_by_step"}))
            save_record(record)


def save_record(record: dict) -> None:
    """Adds `record` to RESULTS, replacing the same head and seed; re-reads the file first so
    that runners started side by side keep each other's records."""
    records = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            records = {(r["head"], r["seed"]): r for r in json.load(f)["runs"]}
    records[record["head"], record["seed"]] = record
    with open(RESULTS, "w") as f:
        json.dump(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores visible "
                f"(shared with other jobs)",
                "runs": list(records.values()),
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
