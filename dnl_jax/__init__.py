"""dnl_jax: Disentangled Non-Local neural networks (Yin et al., ECCV 2020) in JAX/Flax."""

# The label of pixels that no loss or metric counts (mmseg's, and every prepared dataset's).
# Defined before the imports below so that any module can import it from the package root.
IGNORE_LABEL = 255

from dnl_jax import blocks, ops
from dnl_jax.blocks import ContextBlock, DisentangledNonLocal, NonLocal

__all__ = ["IGNORE_LABEL", "blocks", "ops", "NonLocal", "DisentangledNonLocal", "ContextBlock"]
__version__ = "0.1.0"
