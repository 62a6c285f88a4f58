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

import gpu_report
from gpu_common import (
    SECTIONS,
    Recorder,
    classify_error,
    device_memory_limit,
    output_path,
    run_case,
    spec_peak_tflops,
    timed,
)

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
for _path in (_HERE, _REPO):  # this copy of dnl_jax, installed or not
    if _path not in sys.path:
        sys.path.insert(0, _path)

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
# ----------------------------------------------------------------------------------------------
# Device side (imports JAX).
# ----------------------------------------------------------------------------------------------


def matmul_tflops(size: int, dtype) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x: x @ x)
    return 2 * size**3 / min(timed(lambda: matmul(a), 10)) / 1e12


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
    print(gpu_report.render(out_dir, smoke), flush=True)


if __name__ == "__main__":
    main()
