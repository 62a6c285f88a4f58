"""`make demo`: keeps earlier runs (a fresh runs/demo-<UTC date-time> each time, runs/demo-latest
pointing to the newest, DEMO_DIR=DIR resuming DIR; it says which; Python is replaced by a stub
that records its --workdir), needs only the runtime install, and runs without PyTorch or any
test, docs or lint tool (the demo's own command, shortened, with those made unimportable)."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUB = """#!/bin/sh
for last; do :; done
mkdir -p "$last/checkpoints/1000" && echo "stub trained in $last"
"""


def _make_demo(directory, *extra):
    """Runs `make demo` in `directory` with the stub Python and an up-to-date install stamp."""
    command = [
        "make",
        "--no-print-directory",
        "demo",
        "RUNTIME_STAMP=stamp",
        "STAMP=full_stamp",
        "PY=./python_stub",
        *extra,
    ]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=True)
    return done.stdout


def test_make_demo_starts_fresh_each_time_and_resumes_when_asked(tmp_path):
    shutil.copy(os.path.join(REPO, "Makefile"), tmp_path)
    for name in ("pyproject.toml", "requirements-openmmlab.txt"):  # the install stamp's inputs
        shutil.copy(os.path.join(REPO, name), tmp_path)
    (tmp_path / "stamp").touch()  # newer than pyproject.toml: the runtime install is up to date
    stub = tmp_path / "python_stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    runs = tmp_path / "runs"
    (runs / "demo-earlier" / "checkpoints").mkdir(parents=True)  # a user's earlier run

    first = _make_demo(tmp_path)
    second = _make_demo(tmp_path)
    fresh = sorted(name for name in os.listdir(runs) if name.startswith("demo-2"))
    assert len(fresh) == 2 and (runs / "demo-earlier" / "checkpoints").is_dir()
    assert f"fresh run in runs/{fresh[0]}" in first and f"fresh run in runs/{fresh[1]}" in second
    assert os.readlink(runs / "demo-latest") == fresh[1]

    resumed = _make_demo(tmp_path, "DEMO_DIR=runs/demo-latest")
    assert "resuming runs/demo-latest from its latest checkpoint" in resumed
    assert "stub trained in runs/demo-latest" in resumed
    assert "fresh run in runs/new" in _make_demo(tmp_path, "DEMO_DIR=runs/new")
    assert not (tmp_path / "full_stamp").exists()  # the demo never asked for the test install


def test_make_demo_needs_the_runtime_install_only():
    """`make -n demo` on a fresh checkout plans `pip install -e .`, without any extra."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "demo", "VENV=/nonexistent/venv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    installs = [line for line in done.stdout.splitlines() if "pip install" in line]
    assert any(line.rstrip().endswith("install --quiet -e .") for line in installs), done.stdout
    assert not any("[" in line or "requirements-openmmlab" in line for line in installs), installs


# Top-level modules the demo venv does not have: the torch, test, docs and lint extras and the
# OpenMMLab wheels (pyproject.toml, requirements-openmmlab.txt).
NOT_IN_THE_DEMO_VENV = (
    "torch", "safetensors", "mmcv", "mmseg", "mmaction", "mmdet", "mmengine",
    "pytest", "xdist", "av", "tensorflow_datasets", "tensorflow",
    "sphinx", "myst_nb", "furo", "ipykernel", "jupytext", "ruff", "mypy", "build", "twine",
)  # fmt: skip
BLOCKER = """
import sys
# None in sys.modules: `import name` raises ModuleNotFoundError and find_spec(name) is None,
# as for a package that is not installed.
for name in sys.argv.pop(1).split(","):
    sys.modules[name] = None
import runpy
runpy.run_module("dnl_jax.main", run_name="__main__", alter_sys=True)
"""


def test_the_demo_runs_without_torch_or_any_test_tool(tmp_path):
    """What `make demo` runs (python -m dnl_jax.main with the demo config, figures included),
    2 steps long, with the extras' modules unimportable, as in the demo's venv."""
    overrides = {
        "total_steps": 2,
        "batch_size": 4,
        "data.synthetic.num_train": 16,
        "data.synthetic.num_val": 8,
        "evals.val.every_steps": 2,
        "evals.val.batch_size": 8,
        "checkpoint.every_steps": 2,
        "optimizer.warmup_steps": 0,
    }
    command = [
        sys.executable,
        "-c",
        BLOCKER,
        ",".join(NOT_IN_THE_DEMO_VENV),
        "--config",
        os.path.join(REPO, "experiments", "configs", "synthetic_dnl_tiny.py"),
        "--workdir",
        str(tmp_path / "demo"),
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed at step 2" in done.stdout + done.stderr, done.stdout[-2000:]
    assert (tmp_path / "demo" / "attention.png").is_file()
    assert (tmp_path / "demo" / "checkpoints" / "2").is_dir()
