"""The analysis experiment: trained non-local blocks on scenes whose salient keys we know.

    python experiments/analysis_experiment.py --out experiments/results [--workers 2]
        [--part exploratory|confirmatory|all] [--experiments beacon,regions]
        [--seeds 0,...,7 --regions_heads ... --beacon_heads ...] [--steps 1000]
        [--regions_steps 2000] [--num_images 64] [--cue_every N] [--cue_images 128]
        [--runs_dir DIR] [--deadline_s S] [--report_only] [--smoke]

The plan (`PLAN`) has two parts. The exploratory part, seeds 0–7 (the claims of
`analysis_claims`, stated before its runs): FCN, NL, pairwise-only, unary-only and DNL heads on
the beacon scenes, the last four on the regions scenes, cue curve every 50 steps. The
confirmatory part, seeds 8–15 (the claims of `analysis_claims_confirmatory`, committed before
any of its runs): NL, pairwise-only, unary-only and DNL on both families, cue curve every 25
steps. Without `--seeds`, the runs of `--part` (default: both parts) are run, family by family
in `--experiments` order.

Every run is the demo recipe (`dnl_jax.recipes.ablation.synthetic_config`) with one decode head,
one `config.seed` and one scene family (`config.data.synthetic.scenes`: 'beacon', the demo scenes,
or 'regions'), trained with `dnl_jax.train.trainer.train_and_evaluate` in one of `--workers`
processes, and then analysed in the same process (`dnl_jax.analyze.analyze_model` on the first
`--num_images` val scenes of the final checkpoint, saliency and mass statistics included; one
run: experiments/analysis_run.py).

Learning speed: every `--cue_every` steps the run's checkpoint is read back and the head
segments the first `--cue_images` val scenes; the record keeps the share of val objects whose
cue is right (`dnl_jax.analysis.saliency.object_cue_accuracy`) and the mIoU on those scenes, and
each run's steps to learn the cue (`dnl_jax.analysis.saliency.steps_to_learn`, threshold
`analysis_claims.CUE_THRESHOLD`).

Saved runs: each finished run is saved as RUNS_DIR/records/<scenes>_<head>_seed<seed>.json
(with the figure maps); its summary (the same without the maps) as
OUT/analysis_runs/<scenes>_<head>_seed<seed>.json, the committed record of every run. A rerun
skips the runs saved in either place (a run stopped midway resumes from its checkpoint). After
every finished run OUT is rewritten from all saved runs (`analysis_record.write_all`):
analysis.{json,md} (the summary, both parts with their claims, every table) and one figure per
part. `--report_only`: train nothing; copy the summaries of RUNS_DIR's finished runs to
OUT/analysis_runs and rewrite OUT from all summaries (the one command that regenerates the
record: `python experiments/analysis_experiment.py --report_only --out experiments/results`).
`--smoke`: 2 steps, 1 seed, 2 heads (NL on regions, DNL on beacon), 32×32 scenes, tiny data (a
CPU check of the whole pipeline; tests/analysis/test_analysis_experiment.py).

Several processes share one GPU: each gets XLA_PYTHON_CLIENT_PREALLOCATE=false and a
1/workers share of the memory; compiled programs are shared through JAX's persistent
compilation cache in RUNS_DIR/jax_cache, so only the first run of each model compiles.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script

import analysis_record  # noqa: E402  (experiments/analysis_record.py)
from analysis_plan import (  # noqa: E402  (experiments/analysis_plan.py)
    HEADS,
    PLAN,
    key,
    run_specs,
    save_summaries,
    saved_record,
)
from analysis_run import run_one  # noqa: E402  (experiments/analysis_run.py)

__all__ = ["HEADS", "PLAN", "main", "run_one", "run_specs", "save_summaries", "saved_record"]


def _worker_init(cache_dir: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="directory of the record")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--part",
        default="all",
        choices=("exploratory", "confirmatory", "all"),
        help="the planned runs to run (PLAN), when --seeds is not given",
    )
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2: these seeds, not the plan")
    parser.add_argument("--experiments", default="beacon,regions")
    parser.add_argument("--regions_heads", default=None, help="with --seeds")
    parser.add_argument("--beacon_heads", default=None, help="with --seeds")
    parser.add_argument("--steps", type=int, default=1000, help="SGD steps of every run")
    parser.add_argument(
        "--regions_steps",
        type=int,
        default=2000,
        help="SGD steps of the regions runs (0: --steps); at 1000 steps neither "
        "FCN nor DNL had learnt the markers on a CPU trial",
    )
    parser.add_argument("--num_images", type=int, default=64, help="val scenes analysed per run")
    parser.add_argument(
        "--cue_every",
        type=int,
        default=None,
        help="steps between two points of the learning-speed curve (default: the part's, "
        "50 exploratory, 25 confirmatory; 50 with --seeds)",
    )
    parser.add_argument(
        "--cue_images",
        type=int,
        default=128,
        help="val scenes segmented for each point of the learning-speed curve",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="copy RUNS_DIR's finished runs to OUT/analysis_runs and rewrite OUT; train nothing",
    )
    parser.add_argument("--runs_dir", default=os.path.join("runs", "analysis_experiment"))
    parser.add_argument(
        "--deadline_s",
        type=float,
        default=0.0,
        help="start no run after this many seconds (0: no limit)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 steps, seed 0, NL on regions and DNL on beacon, tiny data",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.regions_steps, args.seeds, args.num_images = 2, 0, "0", 8
        args.cue_every, args.cue_images = 1, 8
    numbers = (args.workers, args.steps, args.num_images, args.cue_every or 1, args.cue_images)
    if min(numbers) < 1:
        raise SystemExit(
            "--workers, --steps, --num_images, --cue_every and --cue_images must be >= 1."
        )
    return args


def _context(args, argv) -> dict:
    return {
        "argv": " ".join(
            ["python", "experiments/analysis_experiment.py"]
            + list(argv if argv is not None else sys.argv[1:])
        ),
        "workers": args.workers,
        "host": f"{platform.machine()}, {os.cpu_count()} CPU cores visible",
        "started": time.time(),
    }


def _run_pool(args, todo: list[dict], records: list, failures: list, write) -> None:
    """Runs `todo` in `args.workers` processes, appending to `records` / `failures` and calling
    `write()` after every finished run; no run starts after `args.deadline_s`."""
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.abspath(
        os.path.join(args.runs_dir, "jax_cache")
    )
    start = time.perf_counter()
    with futures.ProcessPoolExecutor(
        args.workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(cache_dir,),
    ) as pool:
        pending = {pool.submit(run_one, spec): spec for spec in todo}
        while pending:
            done, _ = futures.wait(pending, timeout=5, return_when=futures.FIRST_COMPLETED)
            for future in done:
                spec = pending.pop(future)
                if future.cancelled():
                    continue
                try:
                    records.append(future.result())
                    print(
                        f"[{time.perf_counter() - start:6.0f} s] done {spec['scenes']} "
                        f"{spec['head']} seed {spec['seed']}: val mIoU "
                        f"{records[-1]['val_miou']:.4f}, steps to learn the cue "
                        f"{records[-1]['steps_to_learn']}",
                        flush=True,
                    )
                except Exception as error:  # noqa: BLE001  (recorded, the other runs go on)
                    failures.append({**spec, "error": repr(error)})
                    print(f"FAILED {spec}: {error!r}", flush=True)
                write()
            if args.deadline_s and time.perf_counter() - start > args.deadline_s:
                for future in pending:
                    future.cancel()


def main(argv=None) -> None:
    args = parse_args(argv)
    specs = run_specs(args)
    planned = specs if args.smoke or args.seeds else run_specs(args, "all")
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.9, 0.9 / args.workers):.3f}")
    context = _context(args, argv)
    saved = {key(p): saved_record(p, args.out) for p in planned + specs}
    records = [r for r in saved.values() if r is not None]
    todo = [] if args.report_only else [s for s in specs if saved[key(s)] is None]
    failures: list[dict] = []
    started, already = time.perf_counter(), len(records)

    def write():
        context["elapsed_s"] = round(time.perf_counter() - started, 1)
        try:
            save_summaries(args.out, records)
            analysis_record.write_all(args.out, records, failures, context, planned=planned)
        except Exception as error:  # noqa: BLE001  (the saved runs keep everything; rerun
            print(f"could not write the record: {error!r}", flush=True)  # --report_only)
            if not todo:
                raise

    print(
        f"{sum(saved[key(s)] is not None for s in specs)} of {len(specs)} runs already saved "
        f"in {args.runs_dir}/records or {args.out}/analysis_runs; {len(todo)} to run",
        flush=True,
    )
    if todo:
        _run_pool(args, todo, records, failures, write)
    write()
    print(
        f"{len(records)} runs in the record ({len(records) - already} new), {len(failures)} "
        f"failed, {len(todo) - len(failures) - (len(records) - already)} not run; record in "
        f"{args.out}"
    )
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
