"""Shared helpers of the benchmark scripts: timing, the machine's name, JSON + PNG output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import jax

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_description() -> str:
    """CPU model, visible cores and JAX backend, e.g. for the tables' captions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    flags = os.environ.get("XLA_FLAGS", "")
    return (
        f"{cpu}, {os.cpu_count()} cores visible, JAX {jax.__version__} on "
        f"{device.device_kind}" + (f", XLA_FLAGS={flags!r}" if flags else "")
    )


def time_call(fn: Callable[[], object], repeats: int = 3, block=jax.block_until_ready) -> float:
    """Best wall time in seconds of `fn()` over `repeats` runs, after one warm-up (compile) run.

    The minimum is the least noisy statistic on a shared machine (noise only adds time).
    """
    block(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        best = min(best, time.perf_counter() - start)
    return best


def time_interleaved(fns: dict, repeats: int = 3, block=jax.block_until_ready) -> dict:
    """Wall times (seconds, one per round) of each `fns[name]()`, interleaved round by round.

    Side-by-side comparisons on a shared machine whose load drifts: every contender sees the
    same stretch of time. One warm-up call each first (compilation). `block` waits for a result.
    Returns {name: [seconds of round 1, ..., round `repeats`]}.
    """
    for fn in fns.values():
        block(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - start)
    return times


def block_jax_results(result):
    """Waits for the JAX arrays in `result` (a PyTorch result beside them is already computed)."""
    return jax.block_until_ready([r for r in jax.tree.leaves(result) if isinstance(r, jax.Array)])


def add_torch_threads_argument(parser) -> None:
    """`--torch_threads` of the scripts that compare against PyTorch."""
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch.set_num_threads (0: torch's default). For one core on both "
        "sides also set XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
        "intra_op_parallelism_threads=1'",
    )


def set_torch_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def matmul_peak_gflops(size: int = 4096, repeats: int = 5) -> float:
    """Same-run float32 matmul throughput of this machine under jit: 2·size³ FLOP per call."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    matmul = jax.jit(lambda x: x @ x)
    return 2 * size**3 / time_call(lambda: matmul(a), repeats) / 1e9


def compiled_peak_bytes(memory) -> int:
    """Peak memory of a compiled program per device from its `compiled.memory_analysis()`:
    arguments + outputs + temporaries − donated aliases."""
    return int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def case_saver(path: str, load: Callable[[str], dict]) -> Callable[[dict], None]:
    """`save(results)` for a JSON of {..., 'cases': [{'key': ...}, ...]} that compiles append to
    as they finish: the cases another process saved meanwhile are kept (`load(path)` reads the
    file), and the file is replaced whole, never half written."""

    def save(results: dict) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        ours = {c["key"] for c in results["cases"]}
        theirs = [c for c in load(path)["cases"] if c["key"] not in ours]
        results["cases"] = theirs + results["cases"]
        with open(f"{path}.{os.getpid()}.tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(f"{path}.{os.getpid()}.tmp", path)

    return save


def save_json(name: str, payload: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def save_figure(name: str, figure) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def print_table(header: list[str], rows: list[list]) -> None:
    """Markdown table on stdout (pasteable into RESULTS.md)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
