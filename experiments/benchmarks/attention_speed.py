"""Attention fwd+bwd time and GFLOP/s per implementation, beside the same-run matmul peak.

    .venv/bin/pip install -e .[bench]
    .venv/bin/python experiments/benchmarks/attention_speed.py [--sizes 1024 4096 16384]

B=2, C'=Cv=256, whitened pairwise DNL attention (temperature 0.05), loss = Σ out²; the timed
call is the jitted value-and-gradient w.r.t. q, k and v. GFLOP/s counts the useful work
12·B·N²·C (forward 2 matmuls, backward 4; the chunked kernel's recomputed logits are not counted,
as in the flash-attention papers' convention). 'cudnn' is timed only on NVIDIA GPUs; 'xla' is
skipped where its compiled memory would exceed --max-gib. Writes results/attention_speed.{json,png}.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import bench_utils  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from dnl_jax.core import attention  # noqa: E402


def value_and_grad_fn(implementation: str):
    def loss(q, k, v):
        out = attention.dnl_attention(q, k, v, temperature=0.05, implementation=implementation)
        return jnp.sum(jnp.square(out.astype(jnp.float32)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def compiled_gib(fn, *args) -> float:
    stats = fn.lower(*args).compile().memory_analysis()
    used = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    return used / 2**30


def measure(n: int, batch: int, channels: int, implementations, max_gib: float, repeats: int):
    keys = jax.random.split(jax.random.PRNGKey(n), 3)
    dtype = jnp.bfloat16 if "cudnn" in implementations else jnp.float32
    q, k, v = (jax.random.normal(key, (batch, n, channels), dtype) for key in keys)
    flops = 12 * batch * n * n * channels
    # The peak beside each N (not once per run): the shared machine's load drifts over minutes.
    peak = bench_utils.matmul_peak_gflops()
    rows = []
    for name in implementations:
        fn = value_and_grad_fn(name)
        gib = compiled_gib(fn, q, k, v)
        if gib > max_gib:
            rows.append(
                dict(
                    implementation=name,
                    n=n,
                    seconds=None,
                    gflops=None,
                    compiled_gib=gib,
                    matmul_peak_gflops=peak,
                )
            )
            continue
        seconds = bench_utils.time_call(functools.partial(fn, q, k, v), repeats)
        rows.append(
            dict(
                implementation=name,
                n=n,
                seconds=seconds,
                gflops=flops / seconds / 1e9,
                compiled_gib=gib,
                matmul_peak_gflops=peak,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument(
        "--max-gib",
        type=float,
        default=8.0,
        help="skip a run whose compiled memory would exceed this (shared machine)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    implementations = ["xla", "chunked"]
    if attention._nvidia_compute_capability() is not None:
        implementations.append("cudnn")
    machine = bench_utils.machine_description()
    print(f"machine: {machine}")
    rows = []
    for n in args.sizes:
        rows += measure(n, args.batch, args.channels, implementations, args.max_gib, args.repeats)

    bench_utils.print_table(
        [
            "N",
            "implementation",
            "fwd+bwd s",
            "GFLOP/s",
            "matmul peak GFLOP/s (same run)",
            "% of peak",
            "compiled GiB",
        ],
        [
            [
                r["n"],
                r["implementation"],
                f"{r['seconds']:.3f}" if r["seconds"] else f"skipped (> {args.max_gib} GiB)",
                f"{r['gflops']:.1f}" if r["gflops"] else "-",
                f"{r['matmul_peak_gflops']:.1f}",
                f"{100 * r['gflops'] / r['matmul_peak_gflops']:.0f}%" if r["gflops"] else "-",
                f"{r['compiled_gib']:.2f}",
            ]
            for r in rows
        ],
    )
    payload = dict(
        machine=machine,
        batch=args.batch,
        channels=args.channels,
        flop_count="12*B*N^2*C",
        rows=rows,
    )
    print("saved", bench_utils.save_json("attention_speed", payload))
    figure, axis = plt.subplots(figsize=(6, 4))
    for name in implementations:
        points = [
            (r["n"], r["gflops"]) for r in rows if r["implementation"] == name and r["gflops"]
        ]
        if points:
            axis.plot(*zip(*points, strict=False), marker="o", label=name)
    peaks = sorted({(r["n"], r["matmul_peak_gflops"]) for r in rows})
    axis.plot(
        *zip(*peaks, strict=False),
        color="gray",
        linestyle="--",
        label="matmul peak (same run, per N)",
    )
    axis.set(
        xscale="log",
        xlabel="positions N",
        ylabel="GFLOP/s (fwd+bwd)",
        title=f"DNL attention, B={args.batch}, C'={args.channels}",
    )
    axis.legend()
    print("saved", bench_utils.save_figure("attention_speed", figure))


if __name__ == "__main__":
    main()
