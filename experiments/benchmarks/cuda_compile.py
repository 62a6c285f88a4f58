"""Deviceless compilation for NVIDIA H100s on a host without a GPU: devices, one compiled case →
its numbers.

Run inside the CUDA AOT venv (`make cuda-aot`: build/cuda-venv, JAX's CUDA 12 plugin at the
project's JAX version plus nvcc's wheel for ptxas and libdevice) with `JAX_PLATFORMS=cpu` (set
here when unset). `jax.experimental.topologies.get_topology_desc(platform="cuda",
target_config=<gpu_targets/h100_sxm.txtpb>)` gives compile-only H100 devices; a mesh over them in
context (`jax.set_mesh`) makes the model trace for them (dnl_jax.core.target_platform: platform
'gpu', compute capability 9.0), and `.lower().compile()` runs XLA:GPU down to sm_90a machine code
(Triton and ptxas included). XLA logs "Found GPU target config and no PjRtClient. Performing a
deviceless compilation."

What a deviceless compile does not do: it autotunes nothing (XLA's default tilings and the Pallas
kernels' default block sizes are used) and builds no cuDNN graph (XLA runs its cuDNN passes only
with a GPU to ask), so a cuDNN call's workspace is not in the memory numbers. Nothing runs: the
numbers are the compiler's.

Used by cuda_aot.py.
"""

from __future__ import annotations

import functools
import math
import os
import re
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA logs ptxas's per-kernel report (registers, stack frame, spills) at VLOG level 1 of its
# subprocess_compilation module; compile() captures it (`_captured_stderr`).
os.environ.setdefault("TF_CPP_VMODULE", "subprocess_compilation=1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
import bench_utils  # noqa: E402
import numpy as np  # noqa: E402
import tpu_compile  # noqa: E402  (collective_bytes: the HLO text is the same on GPU)
from jax.sharding import AxisType, Mesh  # noqa: E402

TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets", "h100_sxm.txtpb")
GPUS_PER_HOST = 8  # an HGX / DGX H100 node


def _field(spec: str, name: str) -> float:
    return float(re.search(rf"\b{name}:\s*([\d.e+]+)", spec).group(1))


def _matrix_rate(spec: str, primitive_type: int) -> float:
    """Peak tensor-core FLOP/s of one element type from the spec's matrix unit rates: clock ×
    units per SM × operations per clock × SMs × 2 (one multiply-add is two FLOPs)."""
    block = spec[spec.index("matrix_unit_description") :]
    found = re.search(
        rf"key: {primitive_type} value {{ clock_rate_ghz: ([\d.]+) units_per_core: (\d+) "
        r"ops_per_clock: (\d+)",
        block,
    )
    clock, units, ops = (float(x) for x in found.groups())
    return clock * 1e9 * units * ops * _field(spec, "core_count") * 2


@functools.cache
def h100() -> dict:
    """The H100 facts used for "fits" and the roofline estimate, read from the target spec."""
    with open(TARGET) as f:
        spec = f.read()
    return {
        "spec": spec,
        "hbm_bytes": _field(spec, "device_memory_size"),
        "hbm_bytes_per_s": _field(spec, "memory_bandwidth"),
        "tf32_flops": _matrix_rate(spec, 11),  # F32 dots: TF32 tensor cores (XLA's default)
        "bf16_flops": _matrix_rate(spec, 16),
    }


@functools.cache
def gpu_devices(count: int) -> tuple:
    """`count` compile-only H100s: one host of `count` (<= 8) or hosts of 8."""
    from jax.experimental import topologies

    hosts = max(1, math.ceil(count / GPUS_PER_HOST))
    per_host = min(count, GPUS_PER_HOST)
    if hosts * per_host != count:
        raise ValueError(f"{count} GPUs: choose 1-8 or a multiple of {GPUS_PER_HOST}.")
    topology = topologies.get_topology_desc(
        topology_name="",
        platform="cuda",
        target_config=h100()["spec"],
        topology=f"1x{hosts}x{per_host}",
    )
    return tuple(topology.devices)


def gpu_mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> Mesh:
    """A mesh of `shape` over prod(shape) compile-only H100s, every axis Auto (as the trainer's)."""
    devices = np.array(gpu_devices(int(np.prod(shape)))).reshape(shape)
    return Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


class GpuKernelChoices(tpu_compile.KernelChoices):
    """The kernels `implementation=None` picks for a GPU target while a case traces."""

    def emit(self, record):
        match = re.search(r"chose '(\w+)' .* on gpu\.$", record.getMessage())
        if match:
            self.choices.append(match.group(1))


class _captured_stderr:
    """Collects what XLA (C++, file descriptor 2) writes while the context is open."""

    def __enter__(self):
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()


def register_spills(ptxas_log: str) -> list[dict]:
    """ptxas's spill warnings: [{function, spill_store_bytes, spill_load_bytes}], one per kernel
    compile that spilled registers to local memory."""
    pattern = r"spilled to local memory in function '([^']+)', (\d+) bytes spill stores, (\d+)"
    return [
        {"function": name, "spill_store_bytes": int(stores), "spill_load_bytes": int(loads)}
        for name, stores, loads in re.findall(pattern, ptxas_log)
    ]


def _cost_analysis(module) -> dict:
    """XLA's HloCostAnalysis of an HloModule, run through the CPU client: for a deviceless GPU
    compile `compiled.cost_analysis()` is UNIMPLEMENTED and `lowered.cost_analysis()` empty in
    jaxlib 0.10.2."""
    import jax
    from jax._src.lib import _jax  # no public entry point for a module's cost analysis

    cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def hlo_costs(lowered, compiled, gpus: int) -> dict:
    """FLOPs and bytes accessed per GPU per step, two ways, both undercounts:

    - of the program before optimisation (global, divided by `gpus`: data parallel): counts the
      convolutions and dots; Pallas kernels are custom calls there already and count 0;
    - of the optimised per-GPU program: also counts 0 for what XLA turned into custom calls,
      which on a GPU includes every convolution (cuDNN) besides the Pallas/Triton kernels.
    Both seem to count a while loop's body once."""
    before = _cost_analysis(lowered.compiler_ir("hlo").get_hlo_module())
    after = _cost_analysis(compiled._executable.xla_extension_executable().hlo_modules()[0])
    return {
        "hlo_flops_per_gpu_before_opt": before["flops"] / gpus,
        "hlo_bytes_per_gpu_before_opt": before["bytes"] / gpus,
        "hlo_flops_per_gpu_optimised_excl_custom_calls": after["flops"],
        "hlo_bytes_per_gpu_optimised_excl_custom_calls": after["bytes"],
    }


def compile_and_measure(lower_fn, dtype: str = "f32", gpus: int = 1) -> dict:
    """`lower_fn()` → (jaxpr text or None, jax.stages.Lowered), traced with an H100 mesh in
    context; compiles it and returns the compiler's numbers for one GPU: peak bytes (arguments +
    outputs + temporaries − donated aliases) against the H100's memory, HloCostAnalysis FLOPs and
    bytes (`hlo_costs`: undercounts), collective bytes, the custom-call targets, the kernels
    auto-selection picked, ptxas's register spills, compile seconds, and the roofline estimate
    on the spec's peaks (`dtype`: which tensor-core peak) from the FLOPs before optimisation and
    the optimised program's bytes."""
    start, start_cpu = time.perf_counter(), time.process_time()
    with GpuKernelChoices() as choices:
        _, lowered = lower_fn()
    with _captured_stderr() as log:
        compiled = lowered.compile()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    memory = compiled.memory_analysis()
    peak = bench_utils.compiled_peak_bytes(memory)
    text = compiled.as_text()
    costs, chip = hlo_costs(lowered, compiled, gpus), h100()
    flops = costs["hlo_flops_per_gpu_before_opt"]
    flops_peak = chip["bf16_flops" if dtype == "bf16" else "tf32_flops"]
    bytes_ = costs["hlo_bytes_per_gpu_optimised_excl_custom_calls"]
    bound = max(flops / flops_peak, bytes_ / chip["hbm_bytes_per_s"])
    collectives = tpu_compile.collective_bytes(text)
    return {
        "device": "NVIDIA H100 80GB HBM3 (compile-only)",
        "peak_bytes": int(peak),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "hbm_bytes": chip["hbm_bytes"],
        "fits": peak <= chip["hbm_bytes"],
        **costs,
        "collective_bytes": int(sum(collectives.values())),
        "collective_by_op": collectives,
        "custom_calls": sorted(set(re.findall(r'custom_call_target="([^"]+)"', text))),
        "cudnn_calls": len(re.findall(r'custom_call_target="__cudnn\$', text)),
        "auto_choices": choices.choices,
        "register_spills": register_spills(log.text),
        "compile_s": seconds,  # wall clock: trace + lower + compile, on a shared machine
        "compile_cpu_s": cpu_seconds,
        "roofline_s_estimate": bound,
        "mfu_ceiling_estimate": flops / flops_peak / bound if bound else None,
    }
