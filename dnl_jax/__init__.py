"""dnl_jax: Disentangled Non-Local networks (Yin et al., ECCV 2020) in JAX/Flax.

Import the layer you need (`from dnl_jax.core import ops, attention, blocks`); the package itself
imports nothing of its layers, so `import dnl_jax.core.ops` loads the pure math alone. The
layer library's old paths (`dnl_jax.ops`, `dnl_jax.attention`, ...) still import, with a
DeprecationWarning, for one release (`dnl_jax._compat`).
"""

import importlib

from dnl_jax import _compat

# The label of pixels that no loss or metric counts (mmseg's, and every prepared dataset's),
# defined once here so that every layer can import it from the package root.
IGNORE_LABEL = 255

__version__ = "0.1.0"

_compat.install()


def __getattr__(name: str):
    """`dnl_jax.attention` etc. (old paths, `_compat`) as attributes, imported on first use."""
    if f"{__name__}.{name}" in _compat.MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
