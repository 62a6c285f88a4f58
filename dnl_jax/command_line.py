"""Deprecated path, kept for one release (CHANGELOG.md): `python -m dnl_jax.command_line` runs
`python -m dnl_jax.cli.output`, and `dnl_jax.command_line.NAME` is `dnl_jax.cli.output.NAME`."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("dnl_jax.cli.output", run_name="__main__", alter_sys=True)
else:
    import importlib

    sys.modules[__name__] = importlib.import_module("dnl_jax.cli.output")
