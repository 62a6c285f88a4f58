"""Markdown tables (for RESULTS.md and the README) from the JSON files `gpu_suite.py` wrote:

    python experiments/benchmarks/gpu_report.py DIR [--smoke]

Reads DIR/gpu_<section>.json; a missing file or case shows as such, never as a number.
"""

from __future__ import annotations

import argparse
import json
import os

from gpu_common import SECTIONS, output_path


def load(out_dir: str, section: str, smoke: bool) -> dict:
    try:
        with open(output_path(out_dir, section, smoke)) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        return {"error": f"no results ({type(error).__name__})"}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short(status: str, length: int = 70) -> str:
    return status if len(status) <= length else status[:length] + "…"


def percent(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def render_env(data: dict) -> str:
    peaks = {row["dtype"]: row.get("tflops", row["status"]) for row in data.get("matmul_peak", [])}
    return (
        f"Device: **{data.get('device_kind', '?')}** ({data.get('platform', '?')}, "
        f"{data.get('memory_limit_gib', '?')} GiB usable), JAX {data.get('jax_version', '?')}. "
        f"Same-run matmul peak: bf16 {peaks.get('bfloat16', '-')} TFLOP/s, f32 "
        f"{peaks.get('float32', '-')} TFLOP/s; data-sheet bf16 dense peak "
        f"{data.get('bf16_spec_peak_tflops') or 'unknown'} TFLOP/s."
    )


def _errors(values) -> str:
    return " / ".join(f"{v:.2e}" for v in values) if values else None


def render_check(data: dict) -> str:
    bf16 = [
        [
            c["n"],
            c["temperature"],
            c["kernel"],
            short(c["status"]),
            _errors(c.get("floor")),
            _errors(c.get("errors")),
            f"{max(c['ratios']):.2f}" if c.get("ratios") else None,
            c.get("within_bound"),
            c.get("auto_choice"),
        ]
        for c in data.get("bfloat16", [])
    ]
    f32 = [
        [
            c["n"],
            c["kernel"],
            short(c["status"]),
            _errors(c.get("errors")),
            c.get("within_bound"),
            c.get("auto_choice"),
        ]
        for c in data.get("float32", [])
    ]
    return (
        "bfloat16 against the float64 host reference; floor = the exact computation "
        "through a bfloat16 interface (bf16_accuracy.py); bound: error <= 2 × floor:\n\n"
        + table(
            [
                "N",
                "T",
                "kernel",
                "status",
                "floor out / dq / dk / dv / dunary",
                "error out / dq / dk / dv / dunary",
                "error / floor (max)",
                "within 2× floor",
                "auto picks",
            ],
            bf16,
        )
        + "\n\nfloat32 (bound: 2 × 'xla''s error + 1e-5):\n\n"
        + table(
            [
                "N",
                "kernel",
                "status",
                "error out / dq / dk / dv / dunary",
                "within bound",
                "auto picks",
            ],
            f32,
        )
    )


def render_step(data: dict) -> str:
    rows = [
        [
            c["parallelism"],
            f"{c['batch']}×{c['height']}×{c['width']}",
            short(c["status"]),
            c.get("median_step_s"),
            c.get("images_per_s"),
            c.get("achieved_tflops"),
            percent(c.get("mfu_vs_spec_bf16_peak")),
            percent(c.get("mfu_vs_measured_bf16_peak")),
            c.get("compile_and_first_step_s"),
            c.get("loss"),
        ]
        for c in data.get("cases", [])
    ]
    first = next(iter(data.get("cases", [])), {})
    count = next(iter(data.get("flop_count", [])), {})
    flops = (
        f"{count['step_tflop']:.3f} TFLOP per step ({count['method']})"
        if "step_tflop" in count
        else f"FLOP count: {count.get('status', 'missing')}"
    )
    return f"Model {first.get('model', '?')}, {first.get('dtype', '?')}; {flops}:\n\n" + table(
        [
            "driver",
            "batch",
            "status",
            "step s (median)",
            "images/s",
            "TFLOP/s (XLA count)",
            "MFU (data-sheet peak)",
            "MFU (same-run matmul)",
            "compile + 1st step s",
            "loss",
        ],
        rows,
    )


def render_speed(data: dict) -> str:
    rows = [
        [
            c["n"],
            c["implementation"],
            short(c["status"]),
            c.get("fwd_bwd_s"),
            c.get("tflops"),
            percent(c.get("fraction_of_spec_bf16_peak")),
            percent(c.get("fraction_of_measured_bf16_peak")),
            c.get("compiled_gib"),
        ]
        for c in data.get("cases", [])
    ]
    first = next(iter(data.get("cases", [])), {})
    return (
        f"bf16, B={first.get('batch', '?')}, C={first.get('channels', '?')}, "
        "useful FLOP 12·B·N²·C:\n\n"
        + table(
            [
                "N",
                "kernel",
                "status",
                "fwd+bwd s",
                "TFLOP/s",
                "% data-sheet bf16 peak",
                "% same-run matmul peak",
                "compiled GiB",
            ],
            rows,
        )
    )


def render_tpu(data: dict) -> str:
    if "skipped" in data:
        return f"skipped: {data['skipped']}"
    rows = [
        [
            c["n"],
            c["implementation"],
            c.get("block"),
            short(c["status"]),
            c.get("fwd_bwd_s"),
            c.get("tflops"),
            percent(c.get("fraction_of_measured_bf16_peak")),
            c.get("compiled_gib"),
        ]
        for c in data.get("cases", [])
    ]
    return table(
        [
            "N",
            "kernel",
            "block",
            "status",
            "fwd+bwd s",
            "TFLOP/s",
            "% same-run matmul peak",
            "compiled GiB",
        ],
        rows,
    )


def render(out_dir: str, smoke: bool = False) -> str:
    renderers = {
        "env": render_env,
        "attention_check": render_check,
        "train_step": render_step,
        "attention_speed": render_speed,
        "tpu_kernels": render_tpu,
    }
    parts = []
    for section in SECTIONS:
        data = load(out_dir, section, smoke)
        parts.append(f"### {section}\n")
        if "error" in data:
            parts.append(f"section error: {data['error']}\n")
        parts.append(renderers[section](data) + "\n")
    summary = load(out_dir, "summary", smoke)
    parts.append(
        "Sections: "
        + ", ".join(
            f"{k} {v['status']} ({v['seconds']} s)"
            for k, v in summary.items()
            if isinstance(v, dict)
        )
    )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "out_dir", nargs="?", default=os.path.join(os.path.dirname(__file__), "results")
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    print(render(args.out_dir, args.smoke))


if __name__ == "__main__":
    main()
