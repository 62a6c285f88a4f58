"""Deprecated path, kept for one release (CHANGELOG.md): `python -m dnl_jax.evaluate` runs
`python -m dnl_jax.cli.evaluate`, and `dnl_jax.evaluate.NAME` is `dnl_jax.cli.evaluate.NAME`."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("dnl_jax.cli.evaluate", run_name="__main__", alter_sys=True)
else:
    import importlib

    sys.modules[__name__] = importlib.import_module("dnl_jax.cli.evaluate")
