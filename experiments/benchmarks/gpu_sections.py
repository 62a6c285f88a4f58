"""The sections of `gpu_suite.py` that run dnl_jax code: attention check, attention speed, train
step. Each takes (recorder, sizes, out_dir, smoke) and records case by case (see gpu_suite)."""

from __future__ import annotations

import contextlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpu_suite import (
    TEMPERATURE, Recorder, device_memory_limit, peak_fractions, run_case, timed,
)
from dnl_jax import attention

CHECKED = ("xla", "chunked", "cudnn")


def attention_inputs(batch: int, n: int, channels: int, dtype):
    """q, k, v `[B, N, C]` and the unary logits `[B, N]`, rounded to `dtype`, and a float32
    cotangent `[B, N, C]` for the gradients."""
    keys = jax.random.split(jax.random.key(0), 5)
    shapes = [(batch, n, channels)] * 3 + [(batch, n)]
    inputs = [jax.random.normal(key, shape, jnp.float32).astype(dtype)
              for key, shape in zip(keys, shapes)]
    return inputs, jax.random.normal(keys[4], (batch, n, channels), jnp.float32)


def output_and_grads(implementation: str, inputs, cotangent):
    """(out, dq, dk, dv, dunary) of `attention.dnl_attention` with the unary term, as float32."""
    def weighted_sum(q, k, v, unary):
        out = attention.dnl_attention(q, k, v, unary, temperature=TEMPERATURE,
                                implementation=implementation)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    grads, out = jax.jit(jax.grad(weighted_sum, argnums=(0, 1, 2, 3), has_aux=True))(*inputs)
    return [np.asarray(x, np.float32) for x in (out, *grads)]


def relative_errors(results, reference) -> list[float]:
    """max |a − b| / max |b| for each of out, dq, dk, dv, dunary."""
    return [float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
            for a, b in zip(results, reference)]


def highest_precision():
    """float32 matmuls in full precision (GPUs otherwise use TF32) where JAX offers the switch."""
    switch = getattr(jax, "default_matmul_precision", None)
    return contextlib.nullcontext() if switch is None else switch("highest")


def attention_check(recorder: Recorder, sizes: dict, out_dir: str, smoke: bool) -> None:
    """Each kernel in bf16 and f32 against a float32 'xla' reference at the highest matmul
    precision (GPUs otherwise use TF32 for float32 matmuls). A kernel passes if its error is at
    most twice the 'xla' kernel's own error in that dtype, plus 1e-3."""
    for n in sizes["check_n"]:
        for dtype in ("float32", "bfloat16"):
            inputs, cotangent = attention_inputs(sizes["check_batch"], n,
                                                 sizes["check_channels"], getattr(jnp, dtype))
            with highest_precision():
                reference = output_and_grads("xla", [x.astype(jnp.float32) for x in inputs],
                                             cotangent)
            baseline = {}
            for implementation in CHECKED:
                case = {"n": n, "dtype": dtype, "implementation": implementation,
                        "batch": sizes["check_batch"], "channels": sizes["check_channels"],
                        "auto_choice": attention.select_implementation(*inputs[:3])}

                def compare(implementation=implementation):
                    errors = relative_errors(output_and_grads(implementation, inputs, cotangent),
                                             reference)
                    if implementation == "xla":
                        baseline["errors"] = errors
                    bound = [2 * e + 1e-3 for e in baseline.get("errors", [0.0] * 5)]
                    return {"relative_errors_out_dq_dk_dv_dunary": [f"{e:.2e}" for e in errors],
                            "within_tolerance": all(e <= b for e, b in zip(errors, bound))}

                run_case(recorder, "cases", case, compare)


def pairwise_grad_fn(implementation: str):
    """jit of value-and-gradient (q, k, v) of Σ pairwise attention (temperature 0.05)."""
    def total(q, k, v):
        out = attention.dnl_attention(q, k, v, None, temperature=TEMPERATURE,
                                implementation=implementation)
        return jnp.sum(out.astype(jnp.float32))

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))


def compiled_bytes(compiled) -> int:
    analysis = compiled.memory_analysis()
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
               + analysis.output_size_in_bytes)


def attention_speed(recorder: Recorder, sizes: dict, out_dir: str, smoke: bool) -> None:
    """bf16 fwd+bwd time per kernel and N; skips programs XLA says exceed 85% of the memory."""
    batch, channels = sizes["speed_batch"], sizes["speed_channels"]
    memory_limit = device_memory_limit()
    recorder.put("memory_limit_gib", round(memory_limit / 2**30, 1))
    for n in sizes["speed_n"]:
        q, k, v = attention_inputs(batch, n, channels, jnp.bfloat16)[0][:3]
        for implementation in CHECKED:
            case = {"n": n, "implementation": implementation, "batch": batch,
                    "channels": channels, "dtype": "bfloat16"}

            def measure(implementation=implementation):
                start = time.perf_counter()
                compiled = pairwise_grad_fn(implementation).lower(q, k, v).compile()
                row = {"compile_s": round(time.perf_counter() - start, 2),
                       "compiled_gib": round(compiled_bytes(compiled) / 2**30, 3)}
                if compiled_bytes(compiled) > 0.85 * memory_limit:
                    return {**row, "status": "skipped: needs more than 85% of device memory"}
                seconds = min(timed(lambda: compiled(q, k, v), 3))
                tflops = 12 * batch * n * n * channels / seconds / 1e12
                return {**row, "fwd_bwd_s": round(seconds, 5), "tflops": round(tflops, 2),
                        **peak_fractions(tflops, out_dir, smoke)}

            run_case(recorder, "cases", case, measure)


def step_program(parallelism: str, sizes: dict):
    """(compiled step, state, batch, XLA FLOP count) of the train step under jit or a
    one-device pmap; the state is donated."""
    import train_step as train_step_bench

    from dnl_jax import models

    axis_name = "batch" if parallelism == "pmap" else None
    height, width = sizes["step_hw"]
    step_fn, state, batch = train_step_bench.build_step(
        sizes["step_model"], 19, sizes["step_batch"], height, width, axis_name=axis_name,
        dtype=getattr(jnp, sizes["step_dtype"]))
    if parallelism == "jit":
        lowered = jax.jit(step_fn, donate_argnums=0).lower(state, batch)
        return lowered.compile(), state, batch, models.summary_flops(lowered)
    devices = jax.devices()[:1]
    program = jax.pmap(step_fn, axis_name=axis_name, devices=devices, donate_argnums=0)
    # Stacked and placed as pmap's own outputs are, so that feeding the output state back in
    # does not compile the step a second time (it did with plain stacked arrays).
    stacked = NamedSharding(Mesh(np.array(devices), (axis_name,)), P(axis_name))
    state, batch = jax.device_put(jax.tree.map(lambda x: x[None], (state, batch)), stacked)
    return program, state, batch, None


def time_steps(parallelism: str, sizes: dict, out_dir: str, smoke: bool) -> dict:
    start = time.perf_counter()
    program, state, batch, flops = step_program(parallelism, sizes)
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
    row = {"compile_and_first_step_s": round(compile_s, 2), "step_s": [round(t, 4) for t in times],
           "median_step_s": round(step_s, 4),
           "images_per_s": round(sizes["step_batch"] / step_s, 2),
           "loss": round(loss, 4), "loss_finite": bool(np.isfinite(loss))}
    if flops:
        tflops = flops / step_s / 1e12
        row.update(step_tflop=round(flops / 1e12, 3), achieved_tflops=round(tflops, 2),
                   **{k.replace("fraction_of", "mfu_vs"): v
                      for k, v in peak_fractions(tflops, out_dir, smoke).items()})
    return row


def train_step(recorder: Recorder, sizes: dict, out_dir: str, smoke: bool) -> None:
    """jit first (the number the README quotes), then pmap on the same single device if the time
    left covers another compilation as long as jit's."""
    height, width = sizes["step_hw"]
    min_left_s = 1.0 if smoke else 20.0
    for parallelism in ("jit", "pmap"):
        case = {"model": sizes["step_model"], "parallelism": parallelism,
                "batch": sizes["step_batch"], "height": height, "width": width,
                "dtype": f"{sizes['step_dtype']} compute, float32 parameters"}
        run_case(recorder, "cases", case,
                 lambda parallelism=parallelism: time_steps(parallelism, sizes, out_dir, smoke),
                 min_left_s=min_left_s)
        if not smoke:
            min_left_s = max(min_left_s, 1.2 * recorder.data["cases"][-1].get(
                "compile_and_first_step_s", 0.0))
