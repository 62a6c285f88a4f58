"""What gpu_suite.py, its sections (gpu_sections.py) and its report (gpu_report.py) share: the
section names, where each section's JSON goes, the recorder that rewrites it after every case,
timing, and the bfloat16 peaks that TFLOP/s are compared with. Imports no other script of ours,
so the three import it and not each other.
"""

from __future__ import annotations

import json
import os
import time
import traceback

SECTIONS = ("env", "attention_check", "train_step", "attention_speed", "tpu_kernels")
# Dense bfloat16 tensor-core peaks from NVIDIA's data sheets (SXM parts), TFLOP/s, by the
# substring of `device_kind`; the env section also measures a same-run matmul peak.
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "B200": 2250.0,
}
TEMPERATURE = 0.05  # the paper's; sharp logits are the hard case for low precision


def output_path(out_dir: str, section: str, smoke: bool) -> str:
    return os.path.join(out_dir, f"gpu_{'smoke_' if smoke else ''}{section}.json")


class Recorder:
    """A section's results dict, rewritten to its JSON file after every case."""

    def __init__(self, path: str, deadline: float):
        self.path, self.deadline = path, deadline
        self.data: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def left_s(self) -> float:
        return self.deadline - time.time()

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.save()

    def append(self, key: str, value) -> None:
        self.data.setdefault(key, []).append(value)
        self.save()
        print(f"  {json.dumps(value)}", flush=True)

    def save(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(self.path + ".tmp", self.path)


def run_case(recorder: Recorder, key: str, case: dict, fn, min_left_s: float = 5.0) -> None:
    """Appends `{**case, **fn()}` to `recorder[key]`, or the case with 'skipped' (too little time
    left) or 'error' (the exception), so that one failing case never stops the section."""
    if recorder.left_s() < min_left_s:
        recorder.append(key, {**case, "status": f"skipped: {recorder.left_s():.0f} s left"})
        return
    try:
        recorder.append(key, {**case, "status": "ok", **fn()})
    except Exception as error:  # noqa: BLE001 - recorded, the suite goes on
        status = classify_error(error)
        details = (
            {}
            if status.startswith("unsupported")
            else {"traceback": traceback.format_exc(limit=3)[-1500:]}
        )
        recorder.append(key, {**case, "status": status, **details})


def classify_error(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    unsupported = ("unavailable", "not supported", "unsupported", "NotImplemented")
    return ("unsupported: " if any(u in text for u in unsupported) else "error: ") + text


# ----------------------------------------------------------------------------------------------
# Device side (imports JAX when called).
# ----------------------------------------------------------------------------------------------


def timed(fn, repeats: int) -> list[float]:
    """Seconds of `repeats` calls of `fn()` after one warm-up call, each waited for."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def device_memory_limit() -> int:
    """Bytes the default device may allocate (GPU: the allocator's limit; CPU: half the RAM)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def spec_peak_tflops(device_kind: str):
    matches = [name for name in BF16_PEAK_TFLOPS if name in device_kind]
    return BF16_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def measured_bf16_peak(out_dir: str, smoke: bool):
    """The env section's same-run bf16 matmul TFLOP/s, if it got that far."""
    try:
        with open(output_path(out_dir, "env", smoke)) as f:
            rows = json.load(f).get("matmul_peak", [])
        return next(r["tflops"] for r in rows if r["dtype"] == "bfloat16" and "tflops" in r)
    except (OSError, StopIteration, ValueError):
        return None


def peak_fractions(tflops: float, out_dir: str, smoke: bool) -> dict:
    import jax

    spec = spec_peak_tflops(jax.devices()[0].device_kind)
    measured = measured_bf16_peak(out_dir, smoke)
    return {
        "fraction_of_spec_bf16_peak": round(tflops / spec, 4) if spec else None,
        "fraction_of_measured_bf16_peak": round(tflops / measured, 4) if measured else None,
    }
