"""The command-line entry points (each `python -m dnl_jax.NAME` module is a thin wrapper)."""
