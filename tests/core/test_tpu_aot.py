"""CI smoke subset of the ahead-of-time TPU compile: the Pallas TPU kernel forward + backward at
three shapes (one 2048 columns wide, which overflowed VMEM before the wrapper shortened the blocks
of wide rows) and the tiny model's train step, compiled for a `v5e:2x2` slice by the real TPU
compiler (Mosaic included) on this CPU host.

It runs `experiments/benchmarks/tpu_aot.py --smoke` in the AOT venv (build/tpu-venv, made by
`make tpu-aot`, which `make test` runs first): libtpu never enters the main venv. Without that
venv the tests skip locally and fail in CI (`CI` set). Peaks are held to the budgets in
tests/core/tpu_aot_budgets.json (measured peak + headroom; see its "_doc")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TPU_PYTHON = ROOT / "build" / "tpu-venv" / "bin" / "python"
SCRIPT = ROOT / "experiments" / "benchmarks" / "tpu_aot.py"
BUDGETS = Path(__file__).with_name("tpu_aot_budgets.json")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """{case key: case} of the smoke run (compiled once for this module)."""
    if not TPU_PYTHON.exists():
        message = f"no AOT venv at {TPU_PYTHON}: run `make tpu-aot` (creates it; needs pip access)."
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("tpu_aot") / "smoke.json"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "TPU_SKIP_MDS_QUERY": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [str(TPU_PYTHON), str(SCRIPT), "--smoke", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {case["key"]: case for case in json.loads(out.read_text())["cases"]}


def _ok(case: dict) -> dict:
    assert "error" not in case, case.get("error")
    return case


def test_smoke_covers_three_kernel_shapes_and_the_tiny_step(smoke):
    kinds = sorted(json.loads(key)[0] for key in smoke)
    assert kinds == ["kernel", "kernel", "kernel", "step"]


def test_kernels_compile_as_mosaic_forward_and_backward(smoke):
    for key, case in smoke.items():
        if json.loads(key)[0] != "kernel":
            continue
        _ok(case)
        # Forward, dq, dk/dv: three Mosaic calls, none interpreted.
        assert (case["tpu_custom_calls"], case["interpreted_pallas_calls"]) == (3, 0), key


def test_tiny_step_gets_the_tpu_kernel_from_auto_selection(smoke):
    case = _ok(next(c for k, c in smoke.items() if json.loads(k)[0] == "step"))
    assert case["auto_choices"] == ["pallas_tpu"]
    assert case["interpreted_pallas_calls"] == 0
    assert case["tpu_custom_calls"] >= 3  # one DNL block: its forward and backward kernels
    assert case["chips"] == 4 and case["generation"] == "v5e"


def test_peaks_stay_within_the_recorded_budgets(smoke):
    budgets = json.loads(BUDGETS.read_text())["peak_bytes"]
    assert set(budgets) == set(smoke), "budgets and smoke cases differ: update the budget file"
    over = {
        key: (case["peak_bytes"], budgets[key])
        for key, case in smoke.items()
        if _ok(case)["peak_bytes"] > budgets[key]
    }
    assert not over, f"peak bytes above budget (peak, budget): {over}"


def test_main_venv_has_no_libtpu():
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('libtpu'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == "None"
