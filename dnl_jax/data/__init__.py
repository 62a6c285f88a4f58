"""Datasets and input pipelines."""

from dnl_jax.data.sources import load_split  # noqa: F401  (public: dnl_jax.data.load_split)
