"""Everything we need from a (rare, short) GPU or TPU session, in one command of at most 8 minutes:

    python experiments/benchmarks/gpu_suite.py --out DIR          # on the GPU machine
    python experiments/benchmarks/gpu_suite.py --smoke --out DIR  # tiny sizes, any device (CI)

Sections, each in its own process with its own time limit (a hang or a crash costs that section
only, and every section writes its JSON after each case, so a killed run keeps what it measured):

- env: device name and memory, JAX/CUDA versions, the same-run bfloat16 and float32 matmul peaks.
- attention_check: each kernel of the platform (GPU: 'xla', 'chunked', 'cudnn', 'pallas_gpu';
  TPU: 'xla', 'chunked', 'pallas_tpu'; CPU: all, the Pallas ones interpreted) in bfloat16 at
  N = 1023, 1024, 4096 and temperatures 0.05 and 1: its error in out, dq, dk, dv, dunary
  against a float64 host reference, next to the floor (`bf16_accuracy.py`); passes at
  error <= 2 × floor. Then float32 at N = 1023. Where a kernel cannot run the case is recorded
  as 'unsupported' with the reason.
- train_step: the R50-D8 DNL train step (fwd + aux head + loss + bwd + SGD) at 512×1024, batch 8,
  bfloat16 compute: its FLOP count (XLA's cost analysis of the step lowered for CPU), then
  images/s, TFLOP/s and MFU (against the data-sheet and the same-run bf16 matmul peak), jit and
  pmap on one device.
- attention_speed: pairwise attention fwd+bwd at N = 4096 … 65536 in bfloat16 per kernel: time,
  TFLOP/s (12·B·N²·C useful FLOP) and the fraction of the bf16 peak, XLA's compiled memory.
- tpu_kernels: on a TPU only, 'pallas_tpu' per block size against 'xla' (skipped elsewhere).

Budget: the section limits add up to 460 s, so the whole suite, compiles included, fits in 8
minutes on one GPU (sized from the H200 run of RESULTS.md (e): env 4 s, train-step compile
100 s per driver; not yet run end to end at this size).

Writes DIR/gpu_<section>.json (`gpu_smoke_<section>.json` with --smoke) and prints the tables
(`gpu_report.py DIR` prints them again, as Markdown for RESULTS.md and the README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
for _path in (_HERE, _REPO):  # this copy of dnl_jax, installed or not
    if _path not in sys.path:
        sys.path.insert(0, _path)

SECTIONS = ("env", "attention_check", "train_step", "attention_speed", "tpu_kernels")
# Seconds each section may run (compilation included), full size; --budget_s scales them.
SECTION_SECONDS = {
    "env": 15,
    "attention_check": 100,
    "train_step": 250,
    "attention_speed": 85,
    "tpu_kernels": 10,
}
SIZES = {
    "full": dict(
        check_n=(1023, 1024, 4096),
        check_temperatures=(0.05, 1.0),
        check_batch=2,
        check_channels=64,
        chunked_max_n=16384,
        tpu_n=(8192, 32768),
        tpu_blocks=(256, 512, 1024),
        speed_n=(4096, 8192, 16384, 32768, 65536),
        speed_batch=1,
        speed_channels=256,
        step_model="dnl_r50-d8",
        step_hw=(512, 1024),
        step_batch=8,
        step_repeats=5,
        step_dtype="bfloat16",
        matmul_size=8192,
    ),
    # The smoke step is the float32 FCN (the DNL block runs in attention_check): it proves the
    # plumbing and compiles twice (jit, pmap) on CI's CPU, where bfloat16 compiles slowly.
    "smoke": dict(
        check_n=(63,),
        check_temperatures=(0.05, 1.0),
        check_batch=2,
        check_channels=16,
        chunked_max_n=64,
        tpu_n=(200,),
        tpu_blocks=(128, 256),
        speed_n=(64,),
        speed_batch=1,
        speed_channels=16,
        step_model="fcn_tiny",
        step_hw=(64, 64),
        step_batch=2,
        step_repeats=2,
        step_dtype="float32",
        matmul_size=256,
    ),
}
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
# Device side (imports JAX).
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


def matmul_tflops(size: int, dtype) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x: x @ x)
    return 2 * size**3 / min(timed(lambda: matmul(a), 10)) / 1e12


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


def section_env(recorder: Recorder, sizes: dict) -> None:
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    recorder.put("device_kind", device.device_kind)
    recorder.put("platform", device.platform)
    recorder.put("device_count", jax.device_count())
    recorder.put("jax_version", jax.__version__)
    recorder.put("memory_limit_gib", round(device_memory_limit() / 2**30, 1))
    recorder.put("bf16_spec_peak_tflops", spec_peak_tflops(device.device_kind))
    try:
        recorder.put("environment", jax.print_environment_info(return_string=True))
    except Exception as error:  # noqa: BLE001
        recorder.put("environment", classify_error(error))
    for dtype in ("bfloat16", "float32"):
        run_case(
            recorder,
            "matmul_peak",
            {"dtype": dtype, "size": sizes["matmul_size"]},
            # run_case calls it at once, in this iteration: no late binding of `dtype`.
            lambda: {"tflops": round(matmul_tflops(sizes["matmul_size"], getattr(jnp, dtype)), 2)},  # noqa: B023
        )


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", default=os.path.join(_HERE, "results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, CI)")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=sum(SECTION_SECONDS.values()),
        help="total seconds for all sections (default %(default)s)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one, in-process
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.section:
        return run_section(args.section, args.out, args.smoke, args.deadline)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}.")
    run_all(sections, args.out, args.smoke, args.budget_s)


def run_section(section: str, out_dir: str, smoke: bool, deadline: float) -> None:
    recorder = Recorder(output_path(out_dir, section, smoke), deadline)
    recorder.put("section", section)
    recorder.put("smoke", smoke)
    sizes = SIZES["smoke" if smoke else "full"]
    try:
        if section == "env":
            section_env(recorder, sizes)
        else:
            import gpu_sections  # the sections that run dnl_jax code

            getattr(gpu_sections, section)(recorder, sizes, out_dir, smoke)
        recorder.put("finished", True)
    except Exception as error:  # noqa: BLE001 - recorded; the parent goes on to the next section
        recorder.put("error", classify_error(error))
        recorder.put("traceback", traceback.format_exc(limit=5)[-3000:])
        raise


def run_all(sections: list[str], out_dir: str, smoke: bool, budget_s: float) -> None:
    """Each section in a child process with a hard time limit; then the report."""
    start, total = time.time(), sum(SECTION_SECONDS[s] for s in sections)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
    summary, allotted = {}, 0.0
    for section in sections:
        # A section may use its share plus whatever earlier sections left unused.
        allotted += budget_s * SECTION_SECONDS[section] / total
        limit = max(start + allotted - time.time(), 15.0)
        print(
            f"== {section}: up to {limit:.0f} s (suite {time.time() - start:.0f} s in)", flush=True
        )
        # The child stops starting new cases 10 s before its hard limit (to save its JSON).
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--section",
            section,
            "--out",
            out_dir,
            "--deadline",
            str(time.time() + limit - 10),
        ] + (["--smoke"] if smoke else [])
        section_start = time.time()
        try:
            code = subprocess.run(command, env=env, timeout=limit).returncode
            status = "ok" if code == 0 else f"exit code {code}"
        except subprocess.TimeoutExpired:
            status = f"killed after {limit:.0f} s (partial results kept)"
        summary[section] = {"status": status, "seconds": round(time.time() - section_start, 1)}
        print(f"== {section}: {status} in {summary[section]['seconds']} s", flush=True)
        summary["total_seconds"] = round(time.time() - start, 1)
        with open(output_path(out_dir, "summary", smoke), "w") as f:
            json.dump(summary, f, indent=1)
    import gpu_report

    print(gpu_report.render(out_dir, smoke), flush=True)


if __name__ == "__main__":
    main()
