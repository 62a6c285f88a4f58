"""`experiments/benchmarks/gpu_suite.py --smoke` end to end on CPU: every section runs in its own
process, writes its JSON, and the report renders; the kernels (the Pallas ones interpreted) are
checked against the float64 reference and the bfloat16 floor, 'cudnn' is recorded as unsupported
off NVIDIA GPUs (instead of crashing the suite), and the train step reports its FLOP count and
MFU."""

import json
import os
import subprocess
import sys

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "experiments",
    "benchmarks",
)


def load(out_dir, section):
    with open(os.path.join(out_dir, f"gpu_smoke_{section}.json")) as f:
        return json.load(f)


def test_gpu_suite_smoke_runs_every_section_on_cpu(tmp_path):
    out = str(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "gpu_suite.py"),
            "--smoke",
            "--out",
            out,
            "--budget_s",
            "2400",
        ],
        capture_output=True,
        text=True,
        timeout=2500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = load(out, "summary")
    for section in ("env", "attention_check", "train_step", "attention_speed", "tpu_kernels"):
        assert summary[section]["status"] == "ok", (
            section,
            summary[section],
            result.stdout[-3000:],
        )
        assert load(out, section)["finished"] is True

    env = load(out, "env")
    assert env["platform"] == "cpu" and all(r["tflops"] > 0 for r in env["matmul_peak"])

    check = load(out, "attention_check")
    bf16 = {(c["kernel"], c["temperature"]): c for c in check["bfloat16"]}
    f32 = {c["kernel"]: c for c in check["float32"]}
    assert (
        "NVIDIA GPU" in bf16[("cudnn", 0.05)]["status"] and "NVIDIA GPU" in f32["cudnn"]["status"]
    )
    for kernel in ("xla", "chunked", "pallas_tpu", "pallas_gpu"):  # interpreted Pallas kernels
        assert f32[kernel]["status"] == "ok" and f32[kernel]["within_bound"] is True, f32[kernel]
        for temperature in (0.05, 1.0):
            row = bf16[(kernel, temperature)]
            assert row["status"] == "ok" and min(row["floor"]) > 0 and len(row["errors"]) == 5
    for (kernel, _), row in bf16.items():  # within twice the floor, at both temperatures
        assert kernel == "cudnn" or row["within_bound"] is True, row
    assert (
        "error / floor (max)" in result.stdout
        and "| 63 | 0.05 | pallas_tpu | ok |" in result.stdout
    )

    step = load(out, "train_step")
    assert step["flop_count"][0]["step_tflop"] > 0, step["flop_count"]
    steps = {c["parallelism"]: c for c in step["cases"]}
    for driver in ("jit", "pmap"):
        assert steps[driver]["status"] == "ok", steps[driver]
        assert steps[driver]["loss_finite"] and steps[driver]["images_per_s"] > 0
        assert steps[driver]["achieved_tflops"] > 0
        assert steps[driver]["mfu_vs_measured_bf16_peak"] > 0  # CPU: no data-sheet peak
    # One device, same initial state and batch: both drivers take the same first steps.
    assert abs(steps["jit"]["loss"] - steps["pmap"]["loss"]) < 1e-2 * abs(steps["jit"]["loss"])

    speeds = {c["implementation"]: c for c in load(out, "attention_speed")["cases"]}
    for kernel in ("xla", "chunked", "pallas_tpu", "pallas_gpu"):
        assert speeds[kernel]["status"] == "ok" and speeds[kernel]["fwd_bwd_s"] > 0
    assert speeds["cudnn"]["status"].startswith("unsupported: ")

    tpu = load(out, "tpu_kernels")["cases"]
    assert [c["block"] for c in tpu if c["implementation"] == "pallas_tpu"] == [128, 256]
    assert all(c["status"] == "ok" for c in tpu)

    assert "### train_step" in result.stdout and "| jit | 2×64×64 | ok |" in result.stdout
