"""dnl_jax: Disentangled Non-Local networks (Yin et al., ECCV 2020) in JAX/Flax.

Import the layer you need (`from dnl_jax import ops, attention, blocks`); the package itself
imports nothing, so `import dnl_jax.core.ops` loads the pure math alone.
"""

# The label of pixels that no loss or metric counts (mmseg's, and every prepared dataset's),
# defined once here so that every layer can import it from the package root.
IGNORE_LABEL = 255

__version__ = "0.1.0"
