"""`make demo` keeps earlier runs: a fresh runs/demo-<UTC date-time> each time, runs/demo-latest
pointing to the newest, DEMO_DIR=DIR resuming DIR; it says which. Python is replaced by a stub
that records its --workdir, so no training runs here."""

import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUB = """#!/bin/sh
for last; do :; done
mkdir -p "$last/checkpoints/1000" && echo "stub trained in $last"
"""


def _make_demo(directory, *extra):
    """Runs `make demo` in `directory` with the stub Python and an up-to-date install stamp."""
    command = ["make", "--no-print-directory", "demo", "STAMP=stamp", "PY=./python_stub", *extra]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=True)
    return done.stdout


def test_make_demo_starts_fresh_each_time_and_resumes_when_asked(tmp_path):
    shutil.copy(os.path.join(REPO, "Makefile"), tmp_path)
    for name in ("pyproject.toml", "requirements-openmmlab.txt"):  # the install stamp's inputs
        shutil.copy(os.path.join(REPO, name), tmp_path)
    (tmp_path / "stamp").touch()  # newer than pyproject.toml: `install` has nothing to do
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
