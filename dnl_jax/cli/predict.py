"""Command line: a checkpoint applied to your own images.

    python -m dnl_jax.predict --checkpoint runs/demo-latest/checkpoints INPUTS... --output_dir DIR
        [--explain [--query X,Y ...] [--block PATH]] [--mode whole|slide --crop_size H,W
        --stride H,W] [--batch_size N] [--config CONFIG.py] [--exported model.jaxexport]

INPUTS are image files, folders or globs (PNG, JPEG, ...). The checkpoint is a step directory
(or its `checkpoints/` directory: the latest step), trained here or converted from mmseg by
`python -m dnl_jax.interop.convert`; its preprocessing record (docs/predict.md) says how to
normalise and resize. For every image NAME it writes NAME_labels.png (the dataset's ids, with its
palette) and NAME_overlay.png; with --explain, NAME_explain_BLOCK.png per non-local block and
NAME_explain.npz (the maps behind the figures). Files are written whole (temporary name, then
renamed). A bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tqdm

from dnl_jax import tasks
from dnl_jax.cli.output import add_log_level_argument, set_library_log_level
from dnl_jax.inference import figures, files, video
from dnl_jax.inference.detection import write_detections
from dnl_jax.inference.explain import npz_arrays
from dnl_jax.inference.predictor import Predictor
from dnl_jax.inference.record import PreprocessingRecord, record_from_config
from dnl_jax.train.checkpoint_paths import step_directory


def pair(text: str) -> tuple[int, int]:
    """'A,B' → (A, B) integers (argparse type of --query, --crop_size, --stride)."""
    try:
        first, second = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two integers A,B") from None
    return first, second


def load_config_file(path: str):
    """`get_config()` of a config file (ValueError for a missing or broken file)."""
    if not os.path.isfile(path):
        raise ValueError(f"--config={path} does not exist.")
    spec = importlib.util.spec_from_file_location("predict_config", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.get_config()


def record_of_config_file(path: str) -> PreprocessingRecord:
    """The preprocessing record of the training config file `path` (`--config`), its dataset's
    task looked up here: the command's one lookup."""
    config = load_config_file(path)
    task = tasks.for_dataset(config.data.name)
    return record_from_config(config, task, source=f"--config {path}")


def make_predictor(args) -> Predictor:
    if args.exported:
        return Predictor.from_exported(args.exported)
    if not args.checkpoint:
        raise ValueError("give --checkpoint PATH (or --exported model.jaxexport).")
    record = record_of_config_file(args.config) if args.config else None
    return Predictor.from_checkpoint(step_directory(args.checkpoint), record=record)


def check_inputs_fit(paths: Sequence[str], task: str) -> None:
    """One line when the inputs are of another kind than the checkpoint's task."""
    videos = [p for p in paths if p.lower().endswith(files.VIDEO_SUFFIXES)]
    if videos and task != "video":
        raise ValueError(
            f"{videos[0]} is a video but the checkpoint is a {task} model; give images, or a "
            "video checkpoint."
        )
    others = [p for p in paths if p not in videos]
    if others and task == "video":
        raise ValueError(
            f"{others[0]} is not a video ({', '.join(files.VIDEO_SUFFIXES)}) but the checkpoint "
            "is a video model; give video files, or an image checkpoint."
        )


def write_outputs(predictor: Predictor, result, stem: str, args, notes: list[str]) -> list[str]:
    record = predictor.record
    palette = np.asarray(record.palette, np.uint8)
    out = args.output_dir
    written = [
        files.save_png(
            os.path.join(out, f"{stem}_labels.png"),
            files.palette_png(result.labels, palette, record.label_ids),
        ),
        files.save_png(
            os.path.join(out, f"{stem}_overlay.png"),
            files.overlay(result.image, result.labels, palette),
        ),
    ]
    if args.explain:
        explanation = predictor.explain(result.image, queries=args.query, block=args.block)
        written += write_explanation(explanation, stem, out, record)
    return written


def write_explanation(explanation, stem: str, out: str, record) -> list[str]:
    """NAME_explain_BLOCK.png per block and NAME_explain.npz."""
    written = []
    palette = np.asarray(record.palette, np.uint8)
    for maps in explanation.blocks:
        name = f"{stem}_explain_{maps.path.replace('/', '.')}.png"
        written.append(
            figures.save_explain_figure(
                os.path.join(out, name), explanation, maps, record.class_names, palette
            )
        )
    arrays: dict[str, Any] = npz_arrays(explanation)
    written.append(
        files.save_atomic(
            os.path.join(out, f"{stem}_explain.npz"),
            lambda buffer: np.savez_compressed(buffer, **arrays),
        )
    )
    return written


def predict_files(predictor: Predictor, paths, args, notes: list[str], used: set) -> list[str]:
    """Predicts `paths` (one batch) and writes their outputs; returns the files written."""
    written = []
    if predictor.record.task == "video":
        for path in paths:
            ranked = predictor.classify(path, top_k=args.top_k)
            print(video.describe(ranked, predictor.record, os.path.basename(path)))
            stem = files.output_stem(path, used)
            written += video.write_video_result(ranked, stem, args.output_dir, predictor.record)
            if args.explain:
                explanation = predictor.explain(path, queries=args.query, block=args.block)
                written += write_explanation(explanation, stem, args.output_dir, predictor.record)
        return written
    if predictor.record.task == "detection":
        for path in paths:
            found = predictor.detect(path, score_threshold=args.score_threshold, notes=notes)
            stem = files.output_stem(path, used)
            written += write_detections(found, stem, args.output_dir, predictor.record)
            if args.explain:
                explanation = predictor.explain(found.image, queries=args.query, block=args.block)
                written += write_explanation(explanation, stem, args.output_dir, predictor.record)
        return written
    options = dict(mode=args.mode, crop_size=args.crop_size, stride=args.stride)
    results = predictor.predict_batch(paths, notes=notes, **options)
    for path, result in zip(paths, results, strict=True):
        written += write_outputs(predictor, result, files.output_stem(path, used), args, notes)
    return written


def run(args, log=print) -> dict:
    """The command (module docstring); returns {'images', 'written', 'seconds'}."""
    start = time.perf_counter()
    predictor = make_predictor(args)
    suffixes = files.VIDEO_SUFFIXES if predictor.record.task == "video" else files.IMAGE_SUFFIXES
    paths = files.expand_inputs(args.inputs, suffixes)
    check_inputs_fit(paths, predictor.record.task)
    notes: list[str] = []
    written: list[str] = []
    used: set[str] = set()
    bar = tqdm.tqdm(
        total=len(paths), unit="file", disable=not args.progress_bar, dynamic_ncols=True
    )
    try:
        for first in range(0, len(paths), args.batch_size):
            batch = paths[first : first + args.batch_size]
            written += predict_files(predictor, batch, args, notes, used)
            bar.update(len(batch))
    finally:
        bar.close()
    for note in notes:
        log(note)
    seconds = time.perf_counter() - start
    what = "labels, overlays" + (", explanations" if args.explain else "")
    if predictor.record.task != "segmentation":
        what = {"detection": "drawn detections, COCO results JSON", "video": "top-k JSON"}[
            predictor.record.task
        ]
    log(
        f"predict: {len(paths)} file(s) with {predictor.record.model} "
        f"({predictor.record.task}, {predictor.record.num_classes} classes) → "
        f"{os.path.abspath(args.output_dir)} ({what}; {len(written)} files) in {seconds:.1f} s"
    )
    return {"images": len(paths), "written": written, "seconds": seconds}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dnl_jax.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--checkpoint", help="checkpoint step directory (or its checkpoints/)")
    p.add_argument("--exported", help="a `python -m dnl_jax.export` artifact instead")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--config", help="the training config, for checkpoints without a record")
    p.add_argument("--mode", choices=("whole", "slide"), help="default: the record's test mode")
    p.add_argument("--crop_size", type=pair, help="slide windows H,W")
    p.add_argument("--stride", type=pair, help="slide stride H,W")
    p.add_argument("--batch_size", type=int, default=8, help="images of one size per call")
    p.add_argument("--top_k", type=int, default=5, help="video models: classes printed")
    p.add_argument("--score_threshold", type=float, help="detectors: default the record's (0.3)")
    p.add_argument("--explain", action="store_true", help="draw the non-local blocks' maps")
    p.add_argument(
        "--query", type=pair, nargs="+", action="extend", help="query pixels X,Y for --explain"
    )
    p.add_argument("--block", help="explain only this block (its path, e.g. decode_head/dnl_block)")
    p.add_argument("--no_progress_bar", dest="progress_bar", action="store_false")
    add_log_level_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    set_library_log_level(args.log_level)
    if args.batch_size < 1:
        print("predict: --batch_size must be >= 1.", file=sys.stderr)
        return 2
    try:
        run(args)
    except (ValueError, FloatingPointError) as error:
        print(f"predict: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "run", "parser", "pair", "record_of_config_file"]
