"""Deprecated path, kept for one release (CHANGELOG.md): `python -m dnl_jax.analyze` runs
`python -m dnl_jax.cli.analyze`, and `dnl_jax.analyze.NAME` is `dnl_jax.cli.analyze.NAME`."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("dnl_jax.cli.analyze", run_name="__main__", alter_sys=True)
else:
    import importlib

    sys.modules[__name__] = importlib.import_module("dnl_jax.cli.analyze")
