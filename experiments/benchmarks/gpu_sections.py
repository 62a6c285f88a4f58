"""The sections of `gpu_suite.py` that run dnl_jax code: attention check, attention speed, train
step. Each takes (recorder, sizes, out_dir, smoke) and records case by case (see gpu_suite)."""

from __future__ import annotations

import functools
import statistics
import time

import bf16_accuracy
import jax
import jax.numpy as jnp
import numpy as np
from gpu_common import (
    TEMPERATURE,
    Recorder,
    device_memory_limit,
    peak_fractions,
    run_case,
    timed,
)
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dnl_jax.core import attention

# The kernels each platform's sections measure: those that can run fast there, plus 'xla' and
# 'chunked' for comparison. On CPU (--smoke) the Pallas kernels run interpreted and 'cudnn' is
# recorded as unsupported.
PLATFORM_KERNELS = {
    "gpu": ("xla", "chunked", "cudnn", "pallas_gpu"),
    "tpu": ("xla", "chunked", "pallas_tpu"),
    "cpu": ("xla", "chunked", "cudnn", "pallas_tpu", "pallas_gpu"),
}


def platform_kernels() -> tuple:
    return PLATFORM_KERNELS.get(jax.default_backend(), ("xla", "chunked"))


def attention_inputs(batch: int, n: int, channels: int, dtype):
    """q, k, v `[B, N, C]` and the unary logits `[B, N]`, rounded to `dtype`, and a float32
    cotangent `[B, N, C]` for the gradients."""
    keys = jax.random.split(jax.random.key(0), 5)
    shapes = [(batch, n, channels)] * 3 + [(batch, n)]
    inputs = [
        jax.random.normal(key, shape, jnp.float32).astype(dtype)
        for key, shape in zip(keys, shapes, strict=False)
    ]
    return inputs, jax.random.normal(keys[4], (batch, n, channels), jnp.float32)


def float32_check(recorder: Recorder, n: int, sizes: dict) -> None:
    """Each kernel in float32 against the float64 host reference. A kernel passes if its error
    is at most twice 'xla''s own plus 1e-5 (float32 matmuls may run as TF32 on GPUs, for 'xla'
    too)."""
    inputs = bf16_accuracy.make_inputs(sizes["check_batch"], n, sizes["check_channels"])
    reference = bf16_accuracy.exact(inputs, TEMPERATURE)
    baseline = {}
    for kernel in platform_kernels():
        case = {
            "n": n,
            "dtype": "float32",
            "temperature": TEMPERATURE,
            "kernel": kernel,
            "auto_choice": attention.select_implementation(*map(jnp.asarray, inputs[:3])),
        }

        def compare(kernel=kernel):
            results = bf16_accuracy.outputs_and_grads(
                kernel, *map(jnp.asarray, inputs), TEMPERATURE
            )
            errors = bf16_accuracy.relative_errors(results, reference)
            if kernel == "xla":
                baseline["errors"] = errors
            bound = [2 * e + 1e-5 for e in baseline.get("errors", [0.0] * 5)]
            return {
                "errors": errors,
                "within_bound": all(e <= b for e, b in zip(errors, bound, strict=False)),
            }

        run_case(recorder, "float32", case, compare)


def attention_check(recorder: Recorder, sizes: dict, out_dir: str, smoke: bool) -> None:
    """bfloat16: each kernel's error against the float64 host reference and the floor (the
    exact computation through a bfloat16 interface; `bf16_accuracy.py`), at each N and
    temperature; passes at error <= 2 × floor. Then a float32 check at the first N."""
    recorder.put("kernels", list(platform_kernels()))
    for n in sizes["check_n"]:
        for temperature in sizes["check_temperatures"]:
            inputs = bf16_accuracy.make_inputs(sizes["check_batch"], n, sizes["check_channels"])
            floors = bf16_accuracy.floor_and_reference(inputs, temperature)
            auto = attention.select_implementation(
                *(jnp.asarray(x).astype(jnp.bfloat16) for x in inputs[:3])
            )
            for kernel in platform_kernels():
                case = {
                    "n": n,
                    "dtype": "bfloat16",
                    "temperature": temperature,
                    "kernel": kernel,
                    "auto_choice": auto,
                }
                run_case(
                    recorder,
                    "bfloat16",
                    case,
                    functools.partial(
                        _row_without_case,
                        case,
                        bf16_accuracy.kernel_row,
                        kernel,
                        inputs,
                        *floors,
                        temperature,
                    ),
                )
    float32_check(recorder, sizes["check_n"][0], sizes)


def _row_without_case(case: dict, row_fn, *args) -> dict:
    """`row_fn(*args)` less the keys already in `case`."""
    return {key: value for key, value in row_fn(*args).items() if key not in case}


def pairwise_grad_fn(implementation: str):
    """jit of value-and-gradient (q, k, v) of Σ pairwise attention (temperature 0.05)."""

    def total(q, k, v):
        out = attention.dnl_attention(
            q, k, v, None, temperature=TEMPERATURE, implementation=implementation
        )
        return jnp.sum(out.astype(jnp.float32))

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))


def compiled_bytes(compiled) -> int:
    analysis = compiled.memory_analysis()
    return int(
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    )


def speed_row(implementation: str, q, k, v, memory_limit: int, out_dir: str, smoke: bool) -> dict:
    """Compile time, XLA's compiled memory, fwd+bwd seconds, TFLOP/s (12·B·N²·C useful FLOP)
    and peak fractions of one kernel; skips programs XLA says exceed 85% of the memory."""
    batch, n, channels = q.shape
    start = time.perf_counter()
    compiled = pairwise_grad_fn(implementation).lower(q, k, v).compile()
    row = {
        "compile_s": round(time.perf_counter() - start, 2),
        "compiled_gib": round(compiled_bytes(compiled) / 2**30, 3),
    }
    if compiled_bytes(compiled) > 0.85 * memory_limit:
        return {**row, "status": "skipped: needs more than 85% of device memory"}
    seconds = min(timed(lambda: compiled(q, k, v), 3))
    tflops = 12 * batch * n * n * channels / seconds / 1e12
    return {
        **row,
        "fwd_bwd_s": round(seconds, 5),
        "tflops": round(tflops, 2),
        **peak_fractions(tflops, out_dir, smoke),
    }


def attention_speed(recorder: Recorder, sizes: dict, out_dir: str, smoke: bool) -> None:
    """bf16 fwd+bwd time per kernel (`platform_kernels`) and N."""
    batch, channels = sizes["speed_batch"], sizes["speed_channels"]
    memory_limit = device_memory_limit()
    recorder.put("memory_limit_gib", round(memory_limit / 2**30, 1))
    for n in sizes["speed_n"]:
        q, k, v = attention_inputs(batch, n, channels, jnp.bfloat16)[0][:3]
        for implementation in platform_kernels():
            if implementation == "chunked" and n > sizes["chunked_max_n"]:
                continue  # its rate is flat in N (18 TFLOP/s on the H200): saves suite time
            case = {
                "n": n,
                "implementation": implementation,
                "batch": batch,
                "channels": channels,
                "dtype": "bfloat16",
            }
            run_case(
                recorder,
                "cases",
                case,
                functools.partial(speed_row, implementation, q, k, v, memory_limit, out_dir, smoke),
            )


def tpu_kernels(recorder: Recorder, sizes: dict, out_dir: str, smoke: bool) -> None:
    """TPU only: 'pallas_tpu' fwd+bwd per block size against 'xla', to choose its blocks (the
    bfloat16 check and the kernel comparison run in attention_check and attention_speed, which
    pick the TPU's kernels there). Under --smoke it runs anywhere, interpreted, at a tiny size."""
    if jax.default_backend() != "tpu" and not smoke:
        recorder.put("skipped", f"the backend is {jax.default_backend()!r}, not 'tpu'")
        return
    from dnl_jax.core.attention import pallas as pallas_attention

    batch, channels = sizes["speed_batch"], sizes["speed_channels"]
    memory_limit = device_memory_limit()
    for n in sizes["tpu_n"]:
        q, k, v = attention_inputs(batch, n, channels, jnp.bfloat16)[0][:3]
        run_case(
            recorder,
            "cases",
            {"n": n, "implementation": "xla", "block": None},
            functools.partial(speed_row, "xla", q, k, v, memory_limit, out_dir, smoke),
        )
        for block in sizes["tpu_blocks"]:

            def measure(block=block):
                with pallas_attention.block_size_override(block):
                    # run_case calls it at once, in this iteration: q, k, v are this n's.
                    return speed_row("pallas_tpu", q, k, v, memory_limit, out_dir, smoke)  # noqa: B023

            run_case(
                recorder, "cases", {"n": n, "implementation": "pallas_tpu", "block": block}, measure
            )


def step_flop_count(sizes: dict) -> float:
    """XLA's FLOP count of the train step: the same step (attention materialised, 'xla')
    lowered for the host CPU and read with `cost_analysis` (lowering only, no compile). Not on
    the GPU itself: its analysis gave no count on the H200 (RESULTS.md (e)), and it could not
    see inside cuDNN's or Pallas's custom calls anyway. The state is built on the default device
    (quick on an accelerator) and only its shapes are traced."""
    import train_step as train_step_bench

    from dnl_jax import models

    step_fn, state, batch = train_step_bench.build_step(
        sizes["step_model"],
        19,
        sizes["step_batch"],
        *sizes["step_hw"],
        dtype=getattr(jnp, sizes["step_dtype"]),
        implementation="xla",
    )
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
    traced = jax.jit(step_fn).trace(*abstract)
    return models.summary_flops(traced.lower(lowering_platforms=("cpu",)))


def step_program(parallelism: str, sizes: dict):
    """(compiled step, state, batch) of the train step under jit or a one-device pmap; the
    state is donated."""
    import train_step as train_step_bench

    axis_name = "batch" if parallelism == "pmap" else None
    height, width = sizes["step_hw"]
    step_fn, state, batch = train_step_bench.build_step(
        sizes["step_model"],
        19,
        sizes["step_batch"],
        height,
        width,
        axis_name=axis_name,
        dtype=getattr(jnp, sizes["step_dtype"]),
    )
    if parallelism == "jit":
        return jax.jit(step_fn, donate_argnums=0).lower(state, batch).compile(), state, batch
    devices = jax.devices()[:1]
    program = jax.pmap(step_fn, axis_name=axis_name, devices=devices, donate_argnums=0)
    # Stacked and placed as pmap's own outputs are, so that feeding the output state back in
    # does not compile the step a second time (it did with plain stacked arrays).
    stacked = NamedSharding(Mesh(np.array(devices), (axis_name,)), P(axis_name))
    state, batch = jax.device_put(jax.tree.map(lambda x: x[None], (state, batch)), stacked)
    return program, state, batch


def time_steps(parallelism: str, sizes: dict, out_dir: str, smoke: bool, flops) -> dict:
    start = time.perf_counter()
    program, state, batch = step_program(parallelism, sizes)
    state, metrics = program(state, batch)  # pmap compiles here
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(sizes["step_repeats"]):
        start = time.perf_counter()
        state, metrics = program(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    loss = float(np.ravel(np.asarray(metrics["loss"]))[0])
    row = {
        "compile_and_first_step_s": round(compile_s, 2),
        "step_s": [round(t, 4) for t in times],
        "median_step_s": round(step_s, 4),
        "images_per_s": round(sizes["step_batch"] / step_s, 2),
        "loss": round(loss, 4),
        "loss_finite": bool(np.isfinite(loss)),
    }
    if flops:
        tflops = flops / step_s / 1e12
        row.update(
            step_tflop=float(f"{flops / 1e12:.4g}"),
            achieved_tflops=float(f"{tflops:.4g}"),
            **{
                k.replace("fraction_of", "mfu_vs"): v
                for k, v in peak_fractions(tflops, out_dir, smoke).items()
            },
        )
    return row


def train_step(recorder: Recorder, sizes: dict, out_dir: str, smoke: bool) -> None:
    """The step's FLOP count (`step_flop_count`), then jit (the number the README quotes), then
    pmap on the same single device if the time left covers another compilation as long as
    jit's. Each timed case reports TFLOP/s and MFU against the data-sheet and same-run peaks."""
    height, width = sizes["step_hw"]
    run_case(
        recorder,
        "flop_count",
        {
            "model": sizes["step_model"],
            "batch": sizes["step_batch"],
            "height": height,
            "width": width,
        },
        lambda: {
            "step_tflop": step_flop_count(sizes) / 1e12,
            "method": "XLA cost analysis of the step lowered for CPU, attention 'xla'",
        },
    )
    flops = recorder.data["flop_count"][-1].get("step_tflop", 0.0) * 1e12 or None
    min_left_s = 1.0 if smoke else 20.0
    for parallelism in ("jit", "pmap"):
        case = {
            "model": sizes["step_model"],
            "parallelism": parallelism,
            "batch": sizes["step_batch"],
            "height": height,
            "width": width,
            "dtype": f"{sizes['step_dtype']} compute, float32 parameters",
        }
        run_case(
            recorder,
            "cases",
            case,
            lambda parallelism=parallelism: time_steps(parallelism, sizes, out_dir, smoke, flops),
            min_left_s=min_left_s,
        )
        if not smoke:
            min_left_s = max(
                min_left_s, 1.2 * recorder.data["cases"][-1].get("compile_and_first_step_s", 0.0)
            )
