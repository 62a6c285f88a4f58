"""The import structure of experiments/ (tools/check_experiment_imports.py): no import cycles
between the scripts, no deprecated or missing dnl_jax module paths, nothing in dnl_jax importing
experiments/ — and the checker finds each of those when they are there."""

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "check_experiment_imports.py")


def _checker():
    spec = importlib.util.spec_from_file_location("check_experiment_imports", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experiments_import_structure_is_clean():
    out = subprocess.run(
        [sys.executable, TOOL], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("0 cycles; 0 failures")


def test_the_checker_finds_cycles_deprecated_and_missing_modules(tmp_path):
    def write(path, text):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)

    write("experiments/bench/a.py", "import b\n")
    write("experiments/bench/b.py", "def f():\n    from a import x\n")  # inside a function
    write("experiments/bench/c.py", "import a\nfrom dnl_jax import attention\n")
    write("experiments/d.py", "import dnl_jax.nope\nfrom dnl_jax.core import ops\n")
    write("dnl_jax/__init__.py", "")
    write("dnl_jax/core/__init__.py", "")
    write("dnl_jax/core/ops.py", "")
    write("dnl_jax/x.py", "import experiments.d\n")
    problems, scripts, imports = _checker().findings(tmp_path)
    assert (scripts, imports) == (4, 3)
    assert sorted(problems) == [
        "dnl_jax/x.py imports experiments/: nothing may",
        "experiments/bench/c.py imports the deprecated path dnl_jax.attention",
        "experiments/d.py imports dnl_jax.nope: no such module",
        "import cycle: experiments/bench/a.py <-> experiments/bench/b.py",
    ]
