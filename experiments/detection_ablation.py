"""The synthetic detection comparison: the tiny Mask R-CNN without a context block and with one at
c4, same scenes, recipe and steps, over several seeds; each run is `python -m dnl_jax.cli.train` on
`experiments/configs/synthetic_detection_{context}_tiny.py` (COCO box / mask AP by pycocotools on
the val scenes at the end).

    python experiments/detection_ablation.py [--contexts fcn,dnl] [--seeds 0,1,2] \\
        [--runs_dir runs/detection_ablation] [--parallelism jit]
    python experiments/detection_ablation.py --table     # the Markdown of the saved record
    python experiments/detection_ablation.py --cue [--runs_dir ...]   # adds 'cue_right' to it

`cue_right` (also measured after each run): of the val detections scoring > 0.5, the fraction
whose class carries the image's beacon cue (class = 2·colour + cue), from the run's last
checkpoint; 0.5 is chance, 1.0 means the distant cue is used for every object.

Runs are merged into the saved record (a new run replaces the saved one of its context and
seed). `--seeds` sets `config.seed` (initialisation and training order); the scenes
(`config.data.seed`) are the same for every run. Writes experiments/results/
detection_synthetic.json (every run: final metrics, wall time, exact command) and prints the
tables of detection_synthetic.md.
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

from dnl_jax.train import logs
from dnl_jax.train.checkpoint import load_variables

RESULTS = os.path.join("experiments", "results", "detection_synthetic.json")
METRICS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75")


def run(context: str, seed: int, runs_dir: str, parallelism: str) -> dict:
    """Trains + evaluates one config in a fresh workdir; returns its record."""
    workdir = os.path.join(runs_dir, f"{context}_seed{seed}")
    shutil.rmtree(workdir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.train",
        "--config",
        f"experiments/configs/synthetic_detection_{context}_tiny.py",
        "--workdir",
        workdir,
        "--config.progress_bar=False",
        f"--config.seed={seed}",
        f"--config.parallelism={parallelism}",
        "--config.attention_figure=False",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    val = [r for r in logs.read_metrics(workdir) if r["split"] == "val"]
    final = max(val, key=lambda r: r["step"])
    return {
        "context": context,
        "seed": seed,
        "step": final["step"],
        **{key: final[key] for key in METRICS},
        "wall_s": round(wall, 1),
        "parallelism": parallelism,
        "command": " ".join(["python"] + command[1:]),
    }


def cue_right(workdir: str, context: str, score_threshold: float = 0.5) -> float:
    """The 'cue_right' fraction (module docstring) of the run in `workdir`."""
    import jax

    from dnl_jax.data.synthetic_detection import SyntheticDetection
    from dnl_jax.recipes.ablation import synthetic_detection_config
    from dnl_jax.tasks import get_model

    data = synthetic_detection_config().data
    source = SyntheticDetection(
        data.synthetic.num_val,
        image_size=data.synthetic.image_size,
        split="val",
        num_colours=data.num_classes // 2,
        seed=data.seed,
    )
    examples = [source[i] for i in range(len(source))]
    steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    variables = load_variables(os.path.join(workdir, "checkpoints", str(steps[-1])))
    module = get_model(f"mask_rcnn_{context}_tiny", data.num_classes).module
    outputs = jax.jit(lambda v, x, s: module.apply(v, x, s))(
        variables,
        np.stack([e["image"] for e in examples]),
        np.stack([e["image_size"] for e in examples]),
    )
    labels, scores, valid = (np.asarray(outputs[k]) for k in ("labels", "scores", "valid"))
    right = []
    for b, example in enumerate(examples):
        cue = example["gt_labels"][np.argmax(example["gt_valid"])] % 2
        right += list(labels[b][valid[b] & (scores[b] > score_threshold)] % 2 == cue)
    return float(np.mean(right)) if right else 0.0


def markdown_tables(runs: list[dict]) -> str:
    """Per-run table and per-context summary (mean ± std over seeds)."""
    lines = [
        "| context | seed | box AP | box AP50 | box AP75 | mask AP | mask AP50 | mask AP75 "
        "| cue right | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["context"] != "fcn", r["context"], r["seed"])):
        cue = f"{r['cue_right']:.3f}" if "cue_right" in r else "-"
        lines.append(
            f"| {r['context']} | {r['seed']} | "
            + " | ".join(f"{r[key]:.4f}" for key in METRICS)
            + f" | {cue} | {r['wall_s']} |"
        )
    lines += [
        "",
        "| context | runs | box AP mean ± std | mask AP mean ± std |",
        "|---|---|---|---|",
    ]

    def stat(chosen, key):
        values = [r[key] for r in chosen]
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    for context in sorted({r["context"] for r in runs}, key=lambda c: (c != "fcn", c)):
        chosen = [r for r in runs if r["context"] == context]
        box, mask = stat(chosen, "bbox_AP"), stat(chosen, "segm_AP")
        lines.append(f"| {context} | {len(chosen)} | {box} | {mask} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="fcn,dnl")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs_dir", default="runs/detection_ablation")
    parser.add_argument("--parallelism", default="jit", choices=("jit", "pmap"))
    parser.add_argument("--table", action="store_true", help="print the saved record's tables")
    parser.add_argument(
        "--cue",
        action="store_true",
        help="add 'cue_right' to the saved record's runs (their checkpoints)",
    )
    args = parser.parse_args()
    if args.table or args.cue:
        with open(RESULTS) as f:
            record = json.load(f)
        if args.cue:
            for r in record["runs"]:
                workdir = os.path.join(args.runs_dir, f"{r['context']}_seed{r['seed']}")
                r["cue_right"] = round(cue_right(workdir, r["context"]), 4)
            with open(RESULTS, "w") as f:
                json.dump(record, f, indent=1)
        print(markdown_tables(record["runs"]))
        return
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for context in args.contexts.split(","):
            runs.append(run(context, seed, args.runs_dir, args.parallelism))
            runs[-1]["cue_right"] = round(
                cue_right(os.path.join(args.runs_dir, f"{context}_seed{seed}"), context), 4
            )
            print(json.dumps(runs[-1]), flush=True)
    # Merged into the saved record: a new run replaces the saved one of its context and seed.
    saved = []
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            saved = json.load(f)["runs"]
    done = {(r["context"], r["seed"]) for r in runs}
    runs = [r for r in saved if (r["context"], r["seed"]) not in done] + runs
    record = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "runs": runs}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(record, f, indent=1)
    print(markdown_tables(runs))


if __name__ == "__main__":
    main()
