"""`experiments/benchmarks/gpu_suite.py --smoke` end to end on CPU: every section runs in its own
process, writes its JSON, and the report renders; the kernels' checks agree where they can run
and 'cudnn' is recorded as unsupported off NVIDIA GPUs (instead of crashing the suite)."""

import json
import os
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "experiments", "benchmarks")


def load(out_dir, section):
    with open(os.path.join(out_dir, f"gpu_smoke_{section}.json")) as f:
        return json.load(f)


def test_gpu_suite_smoke_runs_every_section_on_cpu(tmp_path):
    out = str(tmp_path)
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "gpu_suite.py"), "--smoke", "--out", out,
         "--budget_s", "2400"],
        capture_output=True, text=True, timeout=2500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = load(out, "summary")
    for section in ("env", "attention_check", "train_step", "attention_speed"):
        assert summary[section]["status"] == "ok", (section, summary[section],
                                                    result.stdout[-3000:])
        assert load(out, section)["finished"] is True

    env = load(out, "env")
    assert env["platform"] == "cpu" and all(r["tflops"] > 0 for r in env["matmul_peak"])

    checks = load(out, "attention_check")["cases"]
    by_kernel = {(c["implementation"], c["dtype"]): c for c in checks}
    for dtype in ("float32", "bfloat16"):
        assert by_kernel[("cudnn", dtype)]["status"].startswith("unsupported: ")
        assert "NVIDIA GPU" in by_kernel[("cudnn", dtype)]["status"]
    for kernel in ("xla", "chunked"):  # float32 kernels agree with the reference
        case = by_kernel[(kernel, "float32")]
        assert case["status"] == "ok" and case["within_tolerance"] is True, case
    assert by_kernel[("chunked", "bfloat16")]["status"] == "ok"

    steps = {c["parallelism"]: c for c in load(out, "train_step")["cases"]}
    for driver in ("jit", "pmap"):
        assert steps[driver]["status"] == "ok", steps[driver]
        assert steps[driver]["loss_finite"] and steps[driver]["images_per_s"] > 0
    # One device, same initial state and batch: both drivers take the same first steps.
    assert abs(steps["jit"]["loss"] - steps["pmap"]["loss"]) < 1e-2 * abs(steps["jit"]["loss"])

    speeds = {c["implementation"]: c for c in load(out, "attention_speed")["cases"]}
    assert speeds["xla"]["status"] == "ok" and speeds["xla"]["fwd_bwd_s"] > 0
    assert speeds["chunked"]["status"] == "ok" and speeds["chunked"]["compiled_gib"] >= 0
    assert speeds["cudnn"]["status"].startswith("unsupported: ")

    assert "### train_step" in result.stdout and "| jit | 2×64×64 | ok |" in result.stdout
