"""Compile everything that would run on a TPU, for real TPU chips, on a CPU-only host.

    make tpu-aot                                              # build/tpu-venv: jax[tpu] + project
    build/tpu-venv/bin/python experiments/benchmarks/tpu_aot.py --only kernels --generations v5e,v6e
    build/tpu-venv/bin/python experiments/benchmarks/tpu_aot.py --only steps --match tiny
    build/tpu-venv/bin/python experiments/benchmarks/tpu_aot.py --only spatial
    build/tpu-venv/bin/python experiments/benchmarks/tpu_aot.py --report   # table of the JSON only
    build/tpu-venv/bin/python experiments/benchmarks/tpu_aot.py --smoke --out /tmp/smoke.json

Each case is traced with a mesh of TPU topology devices in context (so `implementation=None` and
Pallas interpret mode decide for TPU: dnl_jax.core.target_platform) and compiled by the TPU compiler
(Mosaic included); see tpu_compile.py for what is recorded. Nothing runs: the peaks, FLOPs and
bytes are the compiler's, the step times are a roofline estimate on data-sheet peaks. Each case
is appended to results/tpu_aot.json as it finishes (compiles take minutes on 2 CPU cores) and
cases already there are skipped. A case that fails to compile is recorded with its error.

Cases:
- kernels: 'pallas_tpu' forward + backward (through `dnl_attention`, with the unary term) at
  N ∈ {1023, 1024, 4096, 8192, 65536}, C ∈ {64, 128, 256}, 2-D and 3-D grids, whitened or not,
  all or stride-2 sub-sampled keys, bf16 and f32; plus what auto-selection picks. Then the wide
  rows of the detector's blocks: C ∈ {1024, 2048}, 2-D, whitened, all keys, bf16 and f32.
- steps: every published recipe's train step at its crop and global batch on a slice of one
  chip per image (per clip), jit and pmap drivers; the tiny demo model.
- spatial: R101-D8 (its Cityscapes recipe: 19 classes, float32) on v5e, batch 1 per data shard,
  space ∈ {1, 2, 4, 8} on 8 chips: the largest image side (aspect 1:2, multiples of 64) that
  fits, searched on real compiles (fit_search.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
import tpu_compile  # noqa: E402  (sets JAX_PLATFORMS=cpu, TPU_SKIP_MDS_QUERY=1 first)
import bench_utils  # noqa: E402
import fit_search  # noqa: E402
import tpu_steps  # noqa: E402
# isort: on

NAME = "tpu_aot"
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
GRIDS = {  # N → (2-D grid, 3-D grid)
    1023: ((31, 33), (3, 11, 31)),
    1024: ((32, 32), (4, 16, 16)),
    4096: ((64, 64), (4, 32, 32)),
    8192: ((64, 128), (8, 32, 32)),
    65536: ((256, 256), (16, 64, 64)),
}
RECIPES = (  # config file → chips (one image / clip per chip)
    "cityscapes_dnl_r50-d8_512x1024_80k.py",
    "cityscapes_dnl_r101-d8_512x1024_80k.py",
    "cityscapes_dnl_r50-d8_769x769_80k.py",
    "cityscapes_dnl_r101-d8_769x769_80k.py",
    "ade20k_dnl_r101-d8_512x512_160k.py",
    "pascal_context_dnl_r101-d8_520x520_30k.py",
    "kinetics_dnl_i3d_r50_32x2.py",
    "coco_mask_rcnn_r50_fpn_dnl_c4_1x.py",
)
TINY = "synthetic_dnl_tiny.py"
# The tiny model at its recipe's 64×64 has 64 positions (auto picks 'xla'); at 272×272 it has
# 34² = 1156 (N · M > 2²⁰) and auto picks 'pallas_tpu', which the smoke test checks is compiled;
# one image per chip keeps the CI compile short.
TINY_KERNEL_SIZE = {"data.synthetic.image_size": 272, "batch_size": 4}
# The third smoke kernel is 2048 columns wide: at 512-position blocks its backward overflowed a
# v5e's VMEM; the wrapper's shorter blocks for wide rows must keep it compiling.
SMOKE_KERNELS = (((31, 33), 64, "bf16"), ((64, 64), 128, "f32"), ((32, 32), 2048, "bf16"))
WIDE_CHANNELS = (1024, 2048)  # Mask R-CNN's C4 and C5 blocks: 2-D, whitened, all keys


def kernel_cases(generations, channels=(64, 128, 256), *, variants=True):
    """The kernel grid; `variants=False`: only 2-D, all keys, whitened (the wide rows)."""
    # Every (N, C) first (bf16, 2-D, all keys, whitened), then the other variants, so that a
    # run cut short still covers every size.
    dims, subs, whitens = (
        ((0, 1), (False, True), (True, False)) if variants else ((0,), (False,), (True,))
    )
    for dtype, dim, sub, whiten, gen, n, c in itertools.product(
        ("bf16", "f32"), dims, subs, whitens, generations, GRIDS, channels
    ):
        grid = GRIDS[n][dim]
        key = ("kernel", gen, n, c, len(grid), whiten, sub, dtype)
        yield (
            key,
            lambda g=gen, gr=grid, c=c, w=whiten, s=sub, d=dtype: tpu_steps.kernel_case(
                g, gr, c, whiten=w, subsample=s, dtype=d
            ),
        )


def step_cases(match: str):
    files = [(TINY, 4, {}), (TINY, 4, TINY_KERNEL_SIZE)]
    for name in RECIPES:
        files.append((name, None, {}))
    # Every recipe with the jit driver first, then with pmap: a run cut short still has a row
    # for every recipe.
    for driver, (name, chips, overrides) in itertools.product(("jit", "pmap"), files):
        if match and match not in name:
            continue
        path = os.path.join(CONFIGS, name)
        chips = chips or int(tpu_steps.load_config(path).batch_size)
        key = ("step", "v5e", name, json.dumps(overrides, sort_keys=True), driver, chips, 1)
        yield (
            key,
            lambda p=path, n=chips, d=driver, o=overrides: tpu_steps.step_case(
                p, "v5e", n, driver=d, overrides=o
            ),
        )


def smoke_cases():
    for grid, c, dtype in SMOKE_KERNELS:
        key = ("kernel", "v5e", grid, c, dtype)
        yield (
            key,
            lambda g=grid, c=c, d=dtype: tpu_steps.kernel_case(
                "v5e", g, c, whiten=True, subsample=False, dtype=d
            ),
        )
    path = os.path.join(CONFIGS, TINY)
    yield ("step", "tiny"), lambda: tpu_steps.step_case(path, "v5e", 4, overrides=TINY_KERNEL_SIZE)


def _key(case_key) -> str:
    return json.dumps(case_key, default=list)


def run(cases, results: dict, save) -> None:
    """Compiles the cases not in `results` yet, appending each (or its error) as it finishes."""
    done = {c["key"] for c in results["cases"]}
    for key, compile_case in cases:
        if _key(key) in done:
            continue
        try:
            case = compile_case()
        except Exception as error:  # recorded, not hidden: a refused shape is a bug to fix
            case = {"error": f"{type(error).__name__}: {str(error)[:2000]}"}
            traceback.print_exc()
        case["key"] = _key(key)
        results["cases"].append(case)
        save(results)
        print(json.dumps(case), flush=True)


def spatial_fit(space: int, results: dict, save, *, generation="v5e", chips=8) -> None:
    """The largest R101-D8 crop (H × 2H, H a multiple of 64) whose train step fits the chip's
    HBM, batch 1 per data shard, found on real compiles (fit_search.py: a line through the
    measured peaks against H² picks each next compile); every compile is a case."""
    path = os.path.join(CONFIGS, "cityscapes_dnl_r101-d8_512x1024_80k.py")
    hbm = tpu_compile.CHIPS[generation]["hbm_bytes"]

    def peak(side: int) -> float | None:
        overrides = {"data.segmentation.crop_size": (side, 2 * side), "batch_size": chips // space}
        key = ("spatial", generation, side, space)
        run(
            [
                (
                    key,
                    lambda: tpu_steps.step_case(
                        path, generation, chips, space=space, overrides=overrides
                    ),
                )
            ],
            results,
            save,
        )
        case = next(c for c in results["cases"] if c["key"] == _key(key))
        return None if "error" in case else case["peak_bytes"]

    side, probes = fit_search.largest_fitting(peak, hbm)
    print(
        f"spatial {generation} space {space}: largest side that fits {side}, {len(probes)} compiles"
    )


def _mib(x) -> str:
    return f"{x / 2**20:.1f}"


def kernel_summary(results: dict) -> None:
    """One row per (generation, N, C): variants compiled / refused, peak range, auto's picks."""
    groups: dict = {}
    for c in results["cases"]:
        what = json.loads(c["key"])
        if what[0] == "kernel" and len(what) == 8:
            groups.setdefault(tuple(what[1:4]), []).append(c)
    rows = []
    for (gen, n, channels), cases in sorted(groups.items()):
        ok = [c for c in cases if "error" not in c]
        peaks = [c["peak_bytes"] / 2**20 for c in ok]
        rows.append(
            [
                gen,
                n,
                channels,
                len(ok),
                len(cases) - len(ok),
                f"{min(peaks):.1f}–{max(peaks):.1f}" if peaks else "-",
                ",".join(sorted({str(c["tpu_custom_calls"]) for c in ok})),
                ",".join(sorted({c["auto_selects"] for c in ok})),
                f"{max(c['compile_s'] for c in ok):.0f}" if ok else "-",
            ]
        )
    bench_utils.print_table(
        [
            "chip",
            "N",
            "C",
            "variants compiled",
            "refused",
            "peak MiB/chip",
            "tpu_custom_calls",
            "auto picks",
            "max compile s",
        ],
        rows,
    )


def report(results: dict) -> None:
    rows = []
    for c in results["cases"]:
        what = json.loads(c["key"])
        if "error" in c:
            rows.append([" ".join(map(str, what)), "ERROR", c["error"][:80], *[""] * 7])
            continue
        rows.append(
            [
                " ".join(map(str, what)),
                _mib(c["peak_bytes"]),
                "yes" if c.get("fits") else "no" if "fits" in c else "?",
                f"{c['flops'] / 1e9:.2f}",
                f"{c['bytes_accessed'] / 1e9:.2f}",
                _mib(c["collective_bytes"]),
                f"{c['compile_s']:.0f}",
                f"{c['tpu_custom_calls']}/{c['interpreted_pallas_calls']}",
                c.get("auto_selects") or ",".join(sorted(set(c["auto_choices"]))) or "-",
                f"{c['roofline_s_estimate'] * 1e3:.3f} / {c['mfu_ceiling_estimate']:.2f}"
                if c.get("roofline_s_estimate")
                else "-",
            ]
        )
    bench_utils.print_table(
        [
            "case",
            "peak MiB/chip",
            "fits HBM",
            "GFLOP/chip",
            "GB accessed/chip",
            "collective MiB",
            "compile s",
            "tpu_custom_call / interpreted",
            "auto picks",
            "roofline ms / MFU ceiling (estimate)",
        ],
        rows,
    )


def _load(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    import jax
    import libtpu

    return {
        "machine": bench_utils.machine_description(),
        "jax": jax.__version__,
        "libtpu": getattr(libtpu, "__version__", "see pip show libtpu"),
        "chips_data_sheet": tpu_compile.CHIPS,
        "cases": [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="kernels,steps,spatial", help="kernels, steps, spatial")
    parser.add_argument("--generations", default="v5e,v6e", help="kernel grid generations")
    parser.add_argument("--match", default="", help="steps: only config files containing this")
    parser.add_argument("--spaces", default="1,2,4,8", help="spatial: space sizes")
    parser.add_argument("--smoke", action="store_true", help="the CI subset (tests/core)")
    parser.add_argument("--out", default=os.path.join(bench_utils.RESULTS_DIR, f"{NAME}.json"))
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument("--summary", action="store_true", help="kernels: one row per (chip, N, C)")
    args = parser.parse_args()
    results, save = _load(args.out), bench_utils.case_saver(args.out, _load)
    if args.smoke:
        run(smoke_cases(), results, save)
    elif not args.report:
        parts = set(args.only.split(","))
        if unknown := parts - {"kernels", "steps", "spatial"}:
            parser.error(f"--only {sorted(unknown)}: choose from kernels, steps, spatial.")
        if "kernels" in parts:
            generations = args.generations.split(",")
            run(kernel_cases(generations), results, save)
            run(kernel_cases(generations, WIDE_CHANNELS, variants=False), results, save)
        if "steps" in parts:
            run(step_cases(args.match), results, save)
        if "spatial" in parts:
            for space in map(int, args.spaces.split(",")):
                spatial_fit(space, results, save)
    if args.summary:
        kernel_summary(results)
    else:
        report(results)


if __name__ == "__main__":
    main()
