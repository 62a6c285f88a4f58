"""Ahead-of-time TPU compilation on a CPU-only host: topologies, one compiled case → its numbers.

Run inside the AOT venv (`make tpu-aot`: build/tpu-venv, jax[tpu] at the project's JAX version)
with `JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1` (set here when unset). The devices come from
`jax.experimental.topologies.get_topology_desc`; a mesh over them in context (`jax.set_mesh`)
makes the model trace for TPU (dnl_jax.core.target_platform), and `.lower().compile()` runs the real
TPU compiler, Mosaic included. Nothing runs: the numbers are the compiler's.

Used by tpu_aot.py (the full grid) and tests/core/test_tpu_aot.py (the CI smoke subset).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# No TPU is attached: several compiling processes may load libtpu at once (its lockfile is for
# processes sharing real chips).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
import bench_utils  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

GIB = 1024**3
# Data-sheet values per chip (Google Cloud TPU documentation pages tpu/docs/v5e and tpu/docs/v6e):
# HBM capacity (bytes, as printed: "16 GB", "32 GB"), peak bf16 FLOP/s, HBM bandwidth (bytes/s).
# Used for "fits" and for the roofline estimate only; nothing here was measured on a TPU.
CHIPS = {
    "v5e": {"hbm_bytes": 16e9, "bf16_flops": 197e12, "hbm_bytes_per_s": 819e9},
    "v6e": {"hbm_bytes": 32e9, "bf16_flops": 918e12, "hbm_bytes_per_s": 1638e9},
}
# Slices by chip count (2-D tori; a slice is a multiple of a host's 2x2 chips).
SLICE_SHAPES = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}


def topology_name(generation: str, chips: int) -> str:
    """e.g. ('v5e', 8) → 'v5e:2x4'."""
    if chips not in SLICE_SHAPES:
        raise ValueError(
            f"no {generation} slice of {chips} chips; choose one of {list(SLICE_SHAPES)}."
        )
    return f"{generation}:{SLICE_SHAPES[chips]}"


@functools.cache
def tpu_devices(generation: str, chips: int) -> tuple:
    """The devices of a `generation` slice of `chips` chips (no TPU needed)."""
    from jax.experimental import topologies

    name = topology_name(generation, chips)
    return tuple(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)


def tpu_mesh(generation: str, shape: tuple[int, ...], names: tuple[str, ...]) -> Mesh:
    """A mesh of `shape` over the first prod(shape) chips of the smallest slice holding them
    (a single chip: one chip of a 2x2 slice), every axis Auto as in dnl_jax.train.parallel."""
    count = int(np.prod(shape))
    chips = min(c for c in SLICE_SHAPES if c >= count)
    devices = np.array(tpu_devices(generation, chips)[:count]).reshape(shape)
    return Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


class KernelChoices(logging.Handler):
    """Collects the kernels `implementation=None` picks for TPU while a case traces (the
    attention module logs each new choice at DEBUG; its once-per-process memory is cleared
    first). Choices traced for the host (the state's shapes, `jax.eval_shape` of the
    initialiser) are left out."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.choices: list[str] = []

    def emit(self, record):
        match = re.search(r"chose '(\w+)' .* on tpu\.$", record.getMessage())
        if match:
            self.choices.append(match.group(1))

    def __enter__(self):
        from dnl_jax.core import attention

        attention._logged_choices.clear()
        logger = logging.getLogger("dnl_jax.core.attention")
        self._saved = logger.level, logger.propagate
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # collected here, not printed
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("dnl_jax.core.attention")
        logger.removeHandler(self)
        logger.level, logger.propagate = self._saved


def collective_bytes(hlo_text: str) -> dict:
    """{op: bytes per chip per step} summed over the result shapes of each collective."""
    totals = dict.fromkeys(COLLECTIVES, 0)
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for match in pattern.finditer(hlo_text):
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            totals[match.group(2)] += size * _DTYPE_BYTES.get(dtype, 4)
    return totals


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return cost or {}


def compile_and_measure(lower_fn, generation: str) -> dict:
    """`lower_fn()` → (jaxpr text or None, jax.stages.Lowered), traced with the TPU mesh in
    context; compiles it and returns the compiler's numbers for one chip:

    peak_bytes (arguments + outputs + temporaries − donated aliases), flops and bytes_accessed
    (cost analysis of the per-chip program; Mosaic kernels count by their cost estimates),
    collective bytes, tpu_custom_calls in the lowered module, interpreted Pallas calls in the
    jaxpr, compile wall and CPU seconds, and the roofline estimate against the chip's data sheet.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    with KernelChoices() as choices:
        jaxpr_text, lowered = lower_fn()
    lowered_text = lowered.as_text()
    compiled = lowered.compile()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    memory = compiled.memory_analysis()
    peak = bench_utils.compiled_peak_bytes(memory)
    cost = _cost(compiled)
    collectives = collective_bytes(compiled.as_text())
    chip = CHIPS.get(generation)
    case = {
        "generation": generation,
        "peak_bytes": int(peak),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "collective_bytes": int(sum(collectives.values())),
        "collective_by_op": collectives,
        "tpu_custom_calls": lowered_text.count("tpu_custom_call"),
        "interpreted_pallas_calls": len(re.findall(r"interpret=InterpretParams", jaxpr_text or "")),
        "auto_choices": choices.choices,
        "compile_s": seconds,  # wall clock: trace + lower + compile, on a shared machine
        "compile_cpu_s": cpu_seconds,  # CPU time of this process (all threads), load-independent
    }
    if chip:
        case.update(roofline(case, chip))
    return case


def roofline(case: dict, chip: dict) -> dict:
    """Estimate (nothing ran): the step cannot be faster than max(FLOPs / peak FLOP/s, bytes /
    HBM bandwidth) on the data-sheet peaks; the MFU ceiling is the compute time's share of it."""
    compute = case["flops"] / chip["bf16_flops"]
    memory = case["bytes_accessed"] / chip["hbm_bytes_per_s"]
    bound = max(compute, memory)
    return {
        "hbm_bytes": chip["hbm_bytes"],
        "fits": case["peak_bytes"] <= chip["hbm_bytes"],
        "roofline_s_estimate": bound,
        "mfu_ceiling_estimate": compute / bound if bound else None,
    }
