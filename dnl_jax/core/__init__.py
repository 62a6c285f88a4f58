"""The layer library: the math (`ops`), N-D conv modules (`layers`), `dnl_attention` and its kernels
(`attention`), and the non-local family of blocks (`blocks`, `blocks_official`).

It imports nothing else of dnl_jax, so models, analysis and tests build on it and nothing in it
knows about tasks, data or training. This package imports nothing itself: `import
dnl_jax.core.ops` loads the pure math alone.
"""
