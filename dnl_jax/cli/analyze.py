"""Command line: the DNL paper's analysis of a trained model's non-local blocks.

    python -m dnl_jax.cli.analyze --config experiments/configs/NAME.py \
        --checkpoint runs/NAME/checkpoints/1000 [--split val --num_images 64] [--output_dir DIR]

For every `NonLocal` / `DisentangledNonLocal` / `ContextBlock` of the model (head or backbone)
it prints and saves (`analysis.json`) a table: query-independence of the full attention and of
each term, the four consistencies with ground truth (pairwise ↔ within-category, unary ↔
boundary, and the crossed pairs), and the model's mIoU on the analysed images; and it draws
`analysis.png`: per image, the image, ground truth, the full attention of three query pixels,
their pairwise term and the unary term (first block). The statistics are defined in
`dnl_jax.analysis` (consistency = Pearson correlation, our choice: the paper's formula is not
available). Video models get query-independence only (no pixel labels).

On the synthetic scenes, whose salient keys are known (the beacon, the markers), it adds the
saliency columns of `dnl_jax.analysis.saliency`: unary ↔ salient, pairwise ↔ salient (the crossed
control), the share of the unary and pairwise attention mass on salient cells, and the salient
area (that share for a uniform map); the mass statistics of the confirmatory claims (the unary
term's share on boundary cells, the pairwise term's share on the query's own category, each beside
its chance level); the figure adds the salient map beside the unary map.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dnl_jax import analysis, tasks
from dnl_jax.analysis import saliency, viz
from dnl_jax.cli.output import quiet_absl_command
from dnl_jax.models.losses import confusion_matrix
from dnl_jax.models.metrics import metrics_from_confusion
from dnl_jax.train.checkpoint_paths import step_directory
from dnl_jax.train.checkpoint_reading import load_checked_variables

COLUMNS = (
    ("QI full", "query_independence/full"),
    ("QI pairwise", "query_independence/pairwise"),
    ("QI unary", "query_independence/unary"),
    ("pw~within", "pairwise~within"),
    ("un~boundary", "unary~boundary"),
    ("pw~boundary", "pairwise~boundary"),
    ("un~within", "unary~within"),
)
# Scenes with known salient keys only (`dnl_jax.analysis.saliency`).
SALIENCY_COLUMNS = (
    ("un~salient", "unary~salient"),
    ("pw~salient", "pairwise~salient"),
    ("un@salient", "unary@salient"),
    ("pw@salient", "pairwise@salient"),
    ("salient area", "salient_area"),
    # Attention mass on the ground-truth maps and its chance level (the confirmatory claims'
    # statistics, experiments/analysis_claims_confirmatory.py).
    ("un@boundary", "unary@boundary"),
    ("boundary area", "boundary_area"),
    ("pw@within", "pairwise@within"),
    ("within area", "within_area"),
)


def format_value(key: str, value) -> str:
    """'–' for a missing term; query-independence in scientific notation (trained maps can
    differ by 1e-5 between queries), correlations with three decimals."""
    if value is None or value != value:
        return "–"
    return f"{value:.2e}" if key.startswith("query_independence") else f"{value:.3f}"


def load_examples(config, task: tasks.Task, split: str, num_images: int) -> tuple[list[dict], str]:
    """Up to `num_images` examples of `split`, preprocessed to the model's input (the `task`'s
    `analysis_examples`; scenes that know their salient keys add them as 'salient'), and the key
    holding the inputs ('image' or 'video')."""
    return task.analysis_examples(config, split, num_images), task.input_key


def _batches(examples: list[dict], batch_size: int):
    """Stacked batches of examples of equal shapes (real images of different sizes: one by one)."""
    same = len({ex[next(iter(ex))].shape for ex in examples}) == 1
    size = batch_size if same else 1
    for start in range(0, len(examples), size):
        part = examples[start : start + size]
        yield {key: np.stack([ex[key] for ex in part]) for key in part[0]}


def analyze_model(
    module,
    variables,
    examples: list[dict],
    *,
    input_key: str = "image",
    num_classes: int,
    batch_size: int = 16,
    chunk: int = 1024,
    figure_images: int = 3,
) -> dict[str, Any]:
    """Runs the analysis over `examples`; returns {'blocks': [summary per block], 'miou',
    'num_images', 'figure_rows': rows for `viz.decomposition_figure` (first block), 'salient':
    whether the examples carry a 'salient' map (then the saliency statistics are included)}."""
    capturer = analysis.BlockCapturer(module)
    stats: dict[str, analysis.BlockStatistics] = {}
    confusion = np.zeros((num_classes, num_classes), np.int64)
    figure_rows: list[dict] = []
    for batch in _batches(examples, batch_size):
        outputs, captures = capturer(variables, batch[input_key])
        labels = batch["label"] if input_key == "image" else None
        for capture in captures:
            block = stats.setdefault(
                capture.path, analysis.BlockStatistics(capture.path, capture.kind)
            )
            analysis.accumulate(block, capture, labels, chunk=chunk)
            if "salient" in batch:
                saliency.accumulate_saliency(block, capture, batch["salient"], labels, chunk=chunk)
        if labels is None:
            continue
        logits = np.asarray(outputs["logits"])
        confusion += np.asarray(confusion_matrix(logits.argmax(-1), labels, num_classes))
        if captures and len(figure_rows) < figure_images:
            figure_rows += figure_maps(captures[0], batch, figure_images - len(figure_rows))
    miou = metrics_from_confusion(confusion)["miou"] if input_key == "image" else None
    return {
        "blocks": [s.summary() for s in stats.values()],
        "miou": miou,
        "num_images": len(examples),
        "figure_rows": figure_rows,
        "salient": bool(examples) and "salient" in examples[0],
    }


def figure_maps(capture: analysis.BlockCapture, batch: dict, count: int) -> list[dict]:
    """`viz.decomposition_figure` rows for the first `count` images of a batch."""
    rows: list[dict] = []
    if len(capture.grid) != 2 or capture.key_grid != capture.grid:
        return rows  # maps over sub-sampled keys or 3-D grids are not drawn
    for b in range(min(count, len(batch["label"]))):
        points, queries = viz.query_positions(batch["label"][b], capture.grid)
        single = _one_image(capture, b)
        maps = {
            term: None if m is None else m[0]
            for term, m in analysis.attention_rows(single, queries).items()
        }
        salient = (
            saliency.salient_to_grid(batch["salient"][b : b + 1], capture.grid)[0]
            if "salient" in batch
            else None
        )
        rows.append(
            {
                "title": f"{capture.path} ({capture.kind})",
                "image": batch.get("display", batch["image"])[b],
                "label": batch["label"][b],
                "grid": capture.grid,
                "points": points,
                "maps": maps,
                "salient": salient,
            }
        )
    return rows


def _one_image(capture: analysis.BlockCapture, b: int) -> analysis.BlockCapture:
    def pick(x):
        return None if x is None else x[b : b + 1]

    return analysis.BlockCapture(
        capture.path,
        capture.kind,
        capture.grid,
        capture.key_grid,
        pick(capture.q),
        pick(capture.k),
        pick(capture.unary_logits),
        capture.scale,
        capture.whiten,
    )


def columns(salient: bool = False) -> tuple:
    """(name, statistic) of the table: `COLUMNS`, then `SALIENCY_COLUMNS` when `salient`."""
    return COLUMNS + (SALIENCY_COLUMNS if salient else ())


def format_table(result: dict, *, label: str = "") -> list[str]:
    """Markdown table rows (no header) of `analyze_model`'s result, one per block."""
    lines = []
    for block in result["blocks"]:
        cells = [
            format_value(key, block["means"].get(key))
            for _, key in columns(result.get("salient", False))
        ]
        miou = "–" if result["miou"] is None else f"{result['miou']:.4f}"
        lines.append(
            f"| {label or block['path']} | {block['kind']} | " + " | ".join(cells) + f" | {miou} |"
        )
    return lines


def table_header(first: str = "block", *, salient: bool = False) -> list[str]:
    names = [name for name, _ in columns(salient)]
    return [
        f"| {first} | kind | " + " | ".join(names) + " | mIoU |",
        "|---" * (len(names) + 3) + "|",
    ]


def analyze_checkpoint(
    config,
    checkpoint: str,
    *,
    split: str = "val",
    num_images: int = 64,
    batch_size: int = 16,
    output_dir: str | None = None,
    log: Callable = print,
) -> dict[str, Any]:
    """Analyses `checkpoint` (a step directory) of the model `config.model`; writes
    analysis.json and analysis.png to `output_dir` when given; returns the result."""
    if num_images < 1:
        raise ValueError(f"--num_images must be >= 1; got {num_images}.")
    built = tasks.build(config)  # dtype, model options and the model/dataset check applied
    bundle = built.bundle
    # Evaluate's check; another model's or a damaged checkpoint: ValueError, one line.
    variables = load_checked_variables(config, built, step_directory(checkpoint))
    examples, input_key = load_examples(config, built.task, split, num_images)
    result = analyze_model(
        bundle.module,
        variables,
        examples,
        input_key=input_key,
        num_classes=bundle.num_classes,
        batch_size=batch_size,
    )
    if not result["blocks"]:
        log(
            f"model {config.model.name!r} has no non-local-family block: nothing to analyse "
            f"(mIoU on {len(examples)} {split} images: {result['miou']})."
        )
    else:
        log("\n".join(table_header(salient=result["salient"]) + format_table(result)))
    if output_dir:
        write_outputs(
            result,
            output_dir,
            num_classes=bundle.num_classes,
            extra={"config": config.model.name, "checkpoint": checkpoint, "split": split},
        )
    return result


def write_outputs(result: dict, output_dir: str, *, num_classes: int, extra: dict) -> None:
    """analysis.json (everything but the maps) and analysis.png (if there are maps)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "analysis.json"), "w") as f:
        json.dump({**extra, **{k: v for k, v in result.items() if k != "figure_rows"}}, f, indent=1)
    if result["figure_rows"]:
        import matplotlib.pyplot as plt

        fig = viz.decomposition_figure(result["figure_rows"], num_classes=num_classes)
        fig.savefig(os.path.join(output_dir, "analysis.png"), dpi=viz.DPI)
        plt.close(fig)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_absl_command(flags.FLAGS["verbosity"])  # the table, not orbax's restore events
    flag = flags.FLAGS
    try:  # a missing path, another model's or a damaged checkpoint: one line
        output_dir = flag.output_dir or os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(step_directory(flag.checkpoint)))),
            "analysis",
        )
        analyze_checkpoint(
            _CONFIG.value,
            flag.checkpoint,
            split=flag.split,
            num_images=flag.num_images,
            batch_size=flag.batch_size,
            output_dir=output_dir,
        )
    except ValueError as error:
        sys.exit(f"analyze: {error}")
    print(f"wrote {output_dir}/analysis.json and analysis.png")


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.")
    flags.DEFINE_string(
        "checkpoint",
        None,
        "Checkpoint step directory (or checkpoints/: the "
        "latest step), e.g. runs/demo-latest/checkpoints/1000.",
    )
    flags.DEFINE_string("split", "val", "Split of config.data to analyse.")
    flags.DEFINE_integer("num_images", 64, "Images (or videos) analysed: the first N of split.")
    flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where analysis.json / analysis.png go (default: "
        "WORKDIR/analysis next to WORKDIR/checkpoints).",
    )
    flags.mark_flags_as_required(["config", "checkpoint"])
    from dnl_jax.cli.flags import check_override_flags
    from dnl_jax.cli.output import exit_on_bad_config_file

    exit_on_bad_config_file("analyze")
    try:  # before absl parses them: a key that is not one is one line, not a traceback
        check_override_flags(sys.argv)
    except ValueError as error:
        sys.exit(f"analyze: {error}")
    app.run(main)
