"""Peak memory of attention fwd+bwd versus N, 'xla' versus 'chunked', each N in its own process.

    .venv/bin/pip install -e .[bench]
    .venv/bin/python experiments/benchmarks/attention_memory.py

B=1, C'=Cv=256, float32, jitted value-and-gradient w.r.t. q, k, v. Two numbers per point:
- measured: the child process's peak resident memory during the run above its baseline (inputs
  allocated and the program compiled; the peak is reset through /proc/self/clear_refs before the
  run, so compilation is not counted);
- compiled: XLA's own memory analysis of the compiled program (temporaries + arguments + outputs),
  which needs no run, so it also covers N too large or too slow to run here.
N doubles from 1024 until the compiled size exceeds --budget-gib (20 GiB); runs happen only while
the compiled size is below --run-gib and N <= --max-run-n (a shared machine, a bounded runtime).
Writes results/attention_memory.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import bench_utils


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(implementation: str, n: int, run: bool) -> dict:
    """Runs in the subprocess: compile, optionally run once, report memory in GiB."""
    import jax
    import jax.numpy as jnp

    from dnl_jax.core import attention

    def loss(q, k, v):
        return jnp.sum(
            jnp.square(
                attention.dnl_attention(q, k, v, temperature=0.05, implementation=implementation)
            )
        )

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (1, n, 256)) for key in keys)
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    stats = compiled.memory_analysis()
    result = dict(
        implementation=implementation,
        n=n,
        measured_gib=None,
        compiled_gib=(
            stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
        )
        / 2**30,
    )
    if run:
        jax.block_until_ready((q, k, v))
        baseline = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak) to the current RSS
        jax.block_until_ready(compiled(q, k, v))
        result["measured_gib"] = (_status_kib("VmHWM") - baseline) / 2**20
    return result


def sweep(implementation: str, args) -> list[dict]:
    rows, n = [], 1024
    while n <= args.max_n:
        run = n <= args.max_run_n
        command = [sys.executable, __file__, "--child", implementation, str(n), str(int(run))]
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        if result["compiled_gib"] > args.run_gib and run:  # too big to run safely: analysis only
            command[-1] = "0"
            result = json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
        result["within_budget"] = result["compiled_gib"] <= args.budget_gib
        rows.append(result)
        print(json.dumps(result), flush=True)
        if not result["within_budget"]:
            break
        n *= 2
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--budget-gib", type=float, default=20.0)
    parser.add_argument(
        "--run-gib",
        type=float,
        default=8.0,
        help="run (not only compile) while the compiled size is below this",
    )
    parser.add_argument("--max-run-n", type=int, default=16384)
    parser.add_argument("--max-n", type=int, default=2**22)
    args = parser.parse_args()
    if args.child:
        name, n, run = args.child
        print(json.dumps(child(name, int(n), bool(int(run)))))
        return

    rows = sweep("xla", args) + sweep("chunked", args)
    machine = bench_utils.machine_description()
    print(f"machine: {machine}")

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    bench_utils.print_table(
        ["N", "implementation", "measured peak GiB (above baseline)", "compiled GiB", "<= budget"],
        [
            [
                r["n"],
                r["implementation"],
                fmt(r["measured_gib"]),
                fmt(r["compiled_gib"]),
                r["within_budget"],
            ]
            for r in rows
        ],
    )
    largest = {
        name: max(
            [r["n"] for r in rows if r["implementation"] == name and r["within_budget"]],
            default=None,
        )
        for name in ("xla", "chunked")
    }
    for name, n in largest.items():
        last = [r for r in rows if r["implementation"] == name][-1]
        note = ">= {} (sweep stopped at --max-n)" if last["within_budget"] else "{} (2N exceeds it)"
        print(
            f"largest N within {args.budget_gib} GiB (compiled analysis), {name}: " + note.format(n)
        )
    print(
        "saved",
        bench_utils.save_json(
            "attention_memory",
            dict(
                machine=machine,
                batch=1,
                channels=256,
                budget_gib=args.budget_gib,
                largest_n_within_budget=largest,
                rows=rows,
            ),
        ),
    )
    plot(rows, args.budget_gib)


def plot(rows, budget_gib) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, color in (("xla", "tab:blue"), ("chunked", "tab:orange")):
        mine = [r for r in rows if r["implementation"] == name]
        axis.plot(
            [r["n"] for r in mine],
            [r["compiled_gib"] for r in mine],
            "--",
            color=color,
            label=f"{name} (compiled analysis)",
        )
        ran = [r for r in mine if r["measured_gib"] is not None]
        axis.plot(
            [r["n"] for r in ran],
            [r["measured_gib"] for r in ran],
            "o-",
            color=color,
            label=f"{name} (measured peak RSS)",
        )
    axis.axhline(budget_gib, color="gray", linestyle=":", label=f"{budget_gib} GiB")
    axis.set(
        xscale="log",
        yscale="log",
        xlabel="positions N",
        ylabel="GiB",
        title="DNL attention fwd+bwd memory, B=1, C'=256",
    )
    axis.legend(fontsize=7)
    print("saved", bench_utils.save_figure("attention_memory", figure))


if __name__ == "__main__":
    main()
