"""Compile the attention kernels and every recipe's train step for NVIDIA H100s, on a host
without a GPU (deviceless compilation with JAX's CUDA plugin).

    make cuda-aot                                   # build/cuda-venv: CUDA 12 plugin + nvcc wheel
    nice -n 15 build/cuda-venv/bin/python experiments/benchmarks/cuda_aot.py --only kernels
    nice -n 15 build/cuda-venv/bin/python experiments/benchmarks/cuda_aot.py --only steps
    build/cuda-venv/bin/python experiments/benchmarks/cuda_aot.py --report    # tables only

Each case is traced with a mesh of compile-only H100s in context (so `implementation=None` and
Pallas decide for an H100: dnl_jax.core.target_platform) and compiled by XLA:GPU for sm_90a; see
cuda_compile.py for what is recorded and what a deviceless compile leaves out (no autotuning,
no cuDNN graph). Each case is appended to results/cuda_aot.json as it finishes; cases already
there are skipped; a case that fails is recorded with its error.

Cases:
- kernels: `dnl_attention` (pairwise + unary, temperature 0.05, whitened) forward + backward
  (one program: the gradient in q, k, v and the unary logits), batch 1, on one H100, with
  'xla', 'chunked', 'pallas_gpu' and auto, N ∈ {1024, 4096, 16384, 65536}, C ∈ {64, 128, 256},
  bf16 and f32.
- steps: every published recipe's train step (tpu_aot.RECIPES) at its crop and global batch,
  jit driver, on one 8-GPU H100 node; recipes whose batch exceeds 8 also on one image / clip per
  GPU (nodes of 8).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
import cuda_compile  # noqa: E402  (sets JAX_PLATFORMS=cpu and XLA's logging first)
import bench_utils  # noqa: E402
import tpu_aot  # noqa: E402
import tpu_steps  # noqa: E402

# isort: on
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from dnl_jax.core import attention  # noqa: E402
from dnl_jax.tasks import for_dataset  # noqa: E402
from dnl_jax.train import parallel  # noqa: E402

NAME = "cuda_aot"
LENGTHS = (1024, 4096, 16384, 65536)
CHANNELS = (64, 128, 256)
KERNELS = ("xla", "chunked", "pallas_gpu", None)  # None: auto-selection
NODE = cuda_compile.GPUS_PER_HOST


def kernel_case(n: int, channels: int, dtype: str, implementation: str | None) -> dict:
    """Forward + backward of `dnl_attention` on one H100 (q, k, v `[1, N, C]`, unary `[1, N]`)."""
    mesh = cuda_compile.gpu_mesh((1,), ("data",))
    sharding = NamedSharding(mesh, P())
    shapes = [(1, n, channels)] * 3 + [(1, n)]
    args = [jax.ShapeDtypeStruct(s, tpu_steps.DTYPES[dtype], sharding=sharding) for s in shapes]

    def loss(q, k, v, unary):
        out = attention.dnl_attention(
            q, k, v, unary, temperature=0.05, whiten=True, implementation=implementation
        )
        return out.astype(jnp.float32).sum()

    def lower():
        with jax.set_mesh(mesh):
            return None, jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(*args).lower()

    with jax.set_mesh(mesh):
        auto = attention.select_implementation(*args[:3])
    try:
        case = cuda_compile.compile_and_measure(lower, dtype)
    except Exception as error:  # recorded with auto's pick (e.g. 'cudnn' without cuDNN here)
        case = {"error": f"{type(error).__name__}: {str(error)[:2000]}"}
    return {"kind": "kernel", "n": n, "channels": channels, "dtype": dtype,
            "implementation": implementation or "auto", "auto_selects": auto, **case}  # fmt: skip


def _lower_jit(config, gpus: int):
    """The jit driver's step (tpu_steps.lower_jit_on_mesh) on an H100 mesh of `gpus` GPUs."""
    mesh = cuda_compile.gpu_mesh((gpus, 1), (parallel.DATA_AXIS, parallel.SPACE_AXIS))
    return tpu_steps.lower_jit_on_mesh(config, mesh)


def step_case(path: str, gpus: int) -> dict:
    """A recipe's train step at its own crop and global batch on `gpus` H100s."""
    config = tpu_steps.load_config(path)
    dtype = "bf16" if "bfloat16" in str(config.model.dtype) else "f32"
    case = cuda_compile.compile_and_measure(lambda: _lower_jit(config, gpus), dtype, gpus)
    shape = for_dataset(config.data.name).example_shape(config.data)
    batch = int(config.batch_size)
    return {"kind": "step", "config": os.path.basename(path), "model": config.model.name,
            "dtype": str(config.model.dtype), "input": list(shape[:-1]), "batch": batch,
            "gpus": gpus, "per_gpu_batch": batch // gpus, "driver": "jit",
            "xla_flags": os.environ.get("XLA_FLAGS", ""), **case}  # fmt: skip


def kernel_cases():
    # Every kernel at the smaller sizes first: a run cut short still covers every kernel.
    for n, dtype, channels, kernel in itertools.product(
        LENGTHS, ("bf16", "f32"), CHANNELS, KERNELS
    ):
        key = ("kernel", n, channels, dtype, kernel or "auto")
        yield key, lambda n=n, c=channels, d=dtype, k=kernel: kernel_case(n, c, d, k)


def step_cases(match: str):
    names = [name for name in tpu_aot.RECIPES if match in name]
    plans = [(name, NODE) for name in names]
    for name in names:  # one image / clip per GPU where the batch needs more than a node
        batch = int(tpu_steps.load_config(os.path.join(tpu_aot.CONFIGS, name)).batch_size)
        if batch > NODE:
            plans.append((name, batch))
    # XLA_FLAGS change the program (e.g. --xla_gpu_enable_triton_gemm=false): a case of its own.
    flags = tuple(filter(None, [os.environ.get("XLA_FLAGS", "")]))
    for name, gpus in plans:
        path = os.path.join(tpu_aot.CONFIGS, name)
        yield ("step", name, "jit", gpus, *flags), lambda p=path, g=gpus: step_case(p, g)


def _mib(x) -> str:
    return f"{x / 2**20:.1f}"


def _spills(case, at_least: int = 0) -> str:
    """The kernels ptxas spilled registers in, with the spill stores' bytes (those of fewer than
    `at_least` bytes only counted)."""
    found = {(s["function"], s["spill_store_bytes"]) for s in case.get("register_spills", [])}
    big = sorted((name, stores) for name, stores in found if stores >= at_least)
    text = ", ".join(f"{name} {stores} B" for name, stores in big)
    if len(found) > len(big):
        text += f"{' + ' if text else ''}{len(found) - len(big)} kernels < {at_least} B"
    return text or "none"


def _cell(case) -> str:
    if case is None:
        return "-"
    if "error" in case:
        if "cuDNN not found" in case["error"]:
            return "not compiled (no cuDNN here)"
        return "error: " + case["error"].split(":")[0]
    return _mib(case["peak_bytes"])


def kernel_report(cases: list[dict]) -> None:
    """One row per (N, C, dtype): each kernel's peak MiB (or its error), auto's pick, spills."""
    found = {}
    for c in cases:
        key = json.loads(c["key"])
        if key[0] == "kernel":
            found[tuple(key[1:])] = c
    rows = []
    for n, channels, dtype in sorted({k[:3] for k in found}, key=lambda k: (k[0], k[2], k[1])):
        row = [n, channels, dtype]
        row += [_cell(found.get((n, channels, dtype, kernel or "auto"))) for kernel in KERNELS]
        auto = found.get((n, channels, dtype, "auto")) or {}
        pallas = found.get((n, channels, dtype, "pallas_gpu")) or {}
        ok = [c for k, c in found.items() if k[:3] == (n, channels, dtype) and "error" not in c]
        row += [
            auto.get("auto_selects", "-"),
            _spills(pallas) if "error" not in pallas else "-",
            f"{max(c['compile_s'] for c in ok):.1f}" if ok else "-",
        ]
        rows.append(row)
    header = ["N", "C", "dtype", "xla MiB", "chunked MiB", "pallas_gpu MiB", "auto MiB"]
    bench_utils.print_table(
        [*header, "auto picks", "pallas_gpu spill stores", "max compile s"], rows
    )


def step_report(cases: list[dict]) -> None:
    rows = []
    for c in cases:
        key = json.loads(c["key"])
        if key[0] != "step":
            continue
        name = " ".join([key[1], *key[4:]])  # the config, and XLA_FLAGS if any
        if "error" in c:
            rows.append([name, key[3], "ERROR", c["error"][:100], *[""] * 9])
            continue
        rows.append(
            [
                name,
                f"{c['gpus']} × {c['per_gpu_batch']}",
                f"{c['peak_bytes'] / 2**30:.2f}",
                "yes" if c["fits"] else "no",
                f"{c['hlo_flops_per_gpu_before_opt'] / 1e12:.2f}",
                f"{c['hlo_flops_per_gpu_optimised_excl_custom_calls'] / 1e12:.2f}",
                f"{c['hlo_bytes_per_gpu_optimised_excl_custom_calls'] / 1e9:.1f}",
                _mib(c["collective_bytes"]),
                ",".join(sorted(set(c["auto_choices"]))) or "-",
                _spills(c, at_least=256),
                f"{c['compile_s']:.0f}",
                f"{c['roofline_s_estimate'] * 1e3:.0f}",
            ]
        )
    bench_utils.print_table(
        ["recipe", "GPUs × per-GPU batch", "peak GiB/GPU", "fits 79.1 GiB",
         "TFLOP/GPU (HLO before opt.)", "TFLOP/GPU (optimised, excl. custom calls)",
         "GB accessed/GPU (optimised, excl. custom calls)", "collective MiB",
         "auto picks", "ptxas spills", "compile s", "roofline ms (estimate)"],
        rows,
    )  # fmt: skip


def _versions() -> dict:
    names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cuda-nvcc-cu12")
    return {name: importlib.metadata.version(name) for name in names}


def _load(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    chip = {k: v for k, v in cuda_compile.h100().items() if k != "spec"}
    return {
        "machine": bench_utils.machine_description(),
        "versions": _versions(),
        "target_config": os.path.relpath(cuda_compile.TARGET, os.path.dirname(path)),
        "h100_from_target_config": chip,
        "cases": [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="kernels,steps", help="kernels, steps")
    parser.add_argument("--match", default="", help="steps: only config files containing this")
    parser.add_argument("--out", default=os.path.join(bench_utils.RESULTS_DIR, f"{NAME}.json"))
    parser.add_argument("--report", action="store_true", help="only print the tables")
    args = parser.parse_args()
    results, save = _load(args.out), bench_utils.case_saver(args.out, _load)
    if not args.report:
        parts = set(args.only.split(","))
        if unknown := parts - {"kernels", "steps"}:
            parser.error(f"--only {sorted(unknown)}: choose from kernels, steps.")
        if "kernels" in parts:
            tpu_aot.run(kernel_cases(), results, save)
        if "steps" in parts:
            tpu_aot.run(step_cases(args.match), results, save)
    kernel_report(results["cases"])
    step_report(results["cases"])


if __name__ == "__main__":
    main()
