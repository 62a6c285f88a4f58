"""Per-device memory of spatially sharded train steps (mesh data × space), compiled, not run.

    .venv/bin/python experiments/benchmarks/spatial_memory.py            # compile every case
    .venv/bin/python experiments/benchmarks/spatial_memory.py --report   # table + figure only

On 8 fake CPU devices, each case is the jit driver's train step (dnl_jax/train/parallel.py) on
a (data = 8 / space, space) mesh, batch 1 per data shard, images sharded along H (clips along T),
float32, SGD with momentum. XLA's compiled memory analysis of the per-device SPMD program gives
the peak: arguments + outputs + temporaries − donated aliases. Collective bytes: the result sizes
of every all-reduce / all-gather / collective-permute / all-to-all / reduce-scatter in the
compiled program (per device, per step; the gradient all-reduce of data parallelism included).
Cases: DNL R50-D8 and R101-D8 (19 classes) at 512×1024 and 1024×2048, space ∈ {1, 2, 4, 8};
I3D DNL R50 at 32×224² (400 classes) for the same space sizes. The largest resolution fitting a
16 GiB and a 95 GiB device is extrapolated (`largest_fitting`): peak = a + b · pixels per model
and space size, through the two image sizes, or through one with the temporaries ∝ pixels,
solved for pixels at an aspect ratio of 1:2.
Each case is compiled once and appended to results/spatial_memory.json as it finishes (the
R101 compiles take minutes each on CPU); `--report` prints the table and draws the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_utils  # noqa: E402

from dnl_jax.tasks import get_model  # noqa: E402
from dnl_jax.train import parallel  # noqa: E402
from dnl_jax.train import step as step_lib  # noqa: E402
from dnl_jax.train.config import base_config  # noqa: E402

NAME = "spatial_memory"
SPACES = (1, 2, 4, 8)
GIB = 1024**3
BUDGETS_GIB = (16, 95)
IMAGE_CASES = [
    ("dnl_r101-d8", (1024, 2048)),
    ("dnl_r101-d8", (512, 1024)),
    ("dnl_r50-d8", (1024, 2048)),
    ("dnl_r50-d8", (512, 1024)),
]
VIDEO_CASE = ("dnl_i3d_r50", (32, 224, 224))
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
_BYTES = {
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "bf16": 2,
    "f16": 2,
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f64": 8,
    "s64": 8,
    "u64": 8,
}


def collective_bytes(hlo_text: str) -> dict:
    """{op: bytes} summed over the result shapes of each collective instruction."""
    totals = {op: 0 for op in COLLECTIVES}
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for match in pattern.finditer(hlo_text):
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            totals[match.group(2)] += size * _BYTES.get(dtype, 4)
    return totals


def compile_case(model: str, shape: tuple, space: int, num_classes: int) -> dict:
    """Compiles one train step on the (8 / space, space) mesh; returns its memory and traffic."""
    bundle = get_model(model, num_classes, dropout_rate=0.0)
    opt = base_config().optimizer
    optimizer = step_lib.make_optimizer(opt, 1000)
    train_step = step_lib.make_train_step(
        bundle, optimizer, step_lib.learning_rate_schedule(opt, 1000)
    )
    mesh = parallel.make_mesh(space)
    data = jax.device_count() // space
    video = len(shape) == 3
    inputs = jax.ShapeDtypeStruct((data, *shape, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((data,) if video else (data, *shape), jnp.int32)
    batch = {bundle.input_key: inputs, "label": labels}
    small = (1, 8, 32, 32, 3) if video else (1, 64, 64, 3)

    def init_fn():
        variables = bundle.module.init({"params": jax.random.key(0)}, jnp.zeros(small), train=True)
        return step_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=optimizer.init(variables["params"]),
            rng=jax.random.key_data(jax.random.key(1)),
        )

    with jax.set_mesh(mesh):
        state = jax.eval_shape(init_fn)
        replicated = NamedSharding(mesh, P())
        state_sh = jax.tree.map(lambda _: replicated, state)
        batch_sh = {k: NamedSharding(mesh, parallel.batch_spec(v, space)) for k, v in batch.items()}
        start = time.perf_counter()
        compiled = (
            jax.jit(
                train_step,
                in_shardings=(state_sh, batch_sh),
                out_shardings=(state_sh, replicated),
                donate_argnums=0,
            )
            .lower(state, batch)
            .compile()
        )
        seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    peak = bench_utils.compiled_peak_bytes(memory)
    traffic = collective_bytes(compiled.as_text())
    return {
        "model": model,
        "shape": list(shape),
        "space": space,
        "data": data,
        "peak_gib": peak / GIB,
        "temp_gib": memory.temp_size_in_bytes / GIB,
        "argument_gib": memory.argument_size_in_bytes / GIB,
        "collective_gib": sum(traffic.values()) / GIB,
        "collective_by_op_gib": {k: v / GIB for k, v in traffic.items()},
        "compile_s": seconds,
    }


def _load(name: str = NAME) -> dict:
    path = os.path.join(bench_utils.RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        return {"machine": bench_utils.machine_description(), "cases": []}
    with open(path) as f:
        return json.load(f)


def _merge(results: dict) -> dict:
    """`results` plus the cases of results/spatial_memory_part*.json (other processes' shares,
    `--part`) it lacks."""
    cases = list(results["cases"])
    for file in sorted(os.listdir(bench_utils.RESULTS_DIR)):
        if file.startswith(f"{NAME}_part") and file.endswith(".json"):
            done = {_key(c) for c in cases}
            cases += [c for c in _load(file[:-5])["cases"] if _key(c) not in done]
    return {**results, "cases": cases}


def _key(case: dict) -> tuple:
    return case["model"], tuple(case["shape"]), case["space"]


def largest_fitting(cases: list[dict]) -> dict:
    """{(model, space): {budget GiB: (H, W) or None}}, extrapolated at aspect 1:2: the line
    through both image sizes where both were compiled, else temporaries ∝ pixels through the
    one compiled size (peak = (peak − temp) + temp · pixels / pixels₀; the arguments — state,
    gradients — do not grow with the image)."""
    fits = {}
    by = {_key(c): c for c in cases}
    for model, _ in IMAGE_CASES:
        for space in SPACES:
            points = [
                by[k] for k in ((model, s, space) for s in ((512, 1024), (1024, 2048))) if k in by
            ]
            if not points:
                continue
            if len(points) == 2:
                (p0, m0), (p1, m1) = [(np.prod(c["shape"]), c["peak_gib"]) for c in points]
                slope, offset = (m1 - m0) / (p1 - p0), m0 - (m1 - m0) / (p1 - p0) * p0
            else:
                c = points[0]
                slope, offset = c["temp_gib"] / np.prod(c["shape"]), c["peak_gib"] - c["temp_gib"]
            fits[(model, space)] = {}
            for budget in BUDGETS_GIB:
                side = int(np.sqrt(max((budget - offset) / slope, 0) / 2) // 8 * 8)
                fits[(model, space)][budget] = (side, 2 * side) if side >= 8 else None
    return fits


def report(results: dict) -> None:
    cases = sorted(results["cases"], key=lambda c: (c["model"], c["shape"], c["space"]))
    fits = largest_fitting(cases)
    base = {(c["model"], tuple(c["shape"])): c["peak_gib"] for c in cases if c["space"] == 1}
    rows = []
    for c in cases:
        saved = base.get((c["model"], tuple(c["shape"])), float("nan")) - c["peak_gib"]
        fit = fits.get((c["model"], c["space"]), {}) if len(c["shape"]) == 2 else {}
        rows.append(
            [
                c["model"],
                "×".join(map(str, c["shape"])),
                c["space"],
                c["data"],
                f"{c['peak_gib']:.2f}",
                f"{saved:.2f}",
                f"{c['collective_gib']:.3f}",
                *(("×".join(map(str, fit[b])) if fit.get(b) else "—") for b in BUDGETS_GIB),
                f"{c['compile_s']:.0f}",
            ]
        )
    bench_utils.print_table(
        [
            "model",
            "input",
            "space",
            "data",
            "peak GiB/device",
            "saved vs space 1 GiB",
            "collectives GiB/step",
            "fits 16 GiB (extrap.)",
            "fits 95 GiB (extrap.)",
            "compile s",
        ],
        rows,
    )
    full = [c for c in cases if c["model"] == "dnl_r101-d8" and c["shape"] == [1024, 2048]]
    fitting = [c["space"] for c in sorted(full, key=lambda c: c["space"]) if c["peak_gib"] <= 16]
    print(
        f"\nFull-resolution R101-D8 training fits 16 GiB per device from space = "
        f"{fitting[0] if fitting else 'none of ' + str(SPACES)}."
    )
    _figure(cases)


def _figure(cases: list[dict]) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    groups = sorted({(c["model"], tuple(c["shape"])) for c in cases})
    for model, shape in groups:
        points = sorted(
            (c["space"], c["peak_gib"])
            for c in cases
            if (c["model"], tuple(c["shape"])) == (model, shape)
        )
        axis.plot(
            *zip(*points, strict=False), marker="o", label=f"{model} {'×'.join(map(str, shape))}"
        )
    for budget in BUDGETS_GIB:
        axis.axhline(budget, color="grey", linestyle="--", linewidth=0.8)
    axis.set(
        xscale="log",
        yscale="log",
        xlabel="space shards",
        ylabel="peak GiB per device",
        title="Train step, batch 1 per data shard (compiled, float32)",
    )
    axis.set_xticks(SPACES, [str(s) for s in SPACES])
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.legend(fontsize=7)
    print(bench_utils.save_figure(NAME, figure))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="only print the table and figure")
    parser.add_argument("--models", default="", help="comma-separated subset of the models")
    parser.add_argument(
        "--part",
        default="",
        help="write to results/<part>.json instead (a "
        "second process compiling other models; the report merges "
        "results/spatial_memory_part*.json)",
    )
    args = parser.parse_args()
    name = args.part or NAME
    results = _load(name)
    if not args.report:
        done = {_key(c) for c in results["cases"]}
        todo = [(m, s, 19) for m, s in IMAGE_CASES] + [(*VIDEO_CASE, 400)]
        for model, shape, classes in todo:
            if args.models and model not in args.models.split(","):
                continue
            for space in SPACES:
                if (model, tuple(shape), space) in done:
                    continue
                case = compile_case(model, shape, space, classes)
                print(json.dumps(case), flush=True)
                results["cases"].append(case)
                bench_utils.save_json(name, results)
    report(_merge(_load()) if not args.part else results)


if __name__ == "__main__":
    main()
