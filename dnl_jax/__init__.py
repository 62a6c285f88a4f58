"""dnl_jax: Disentangled Non-Local neural networks (Yin et al., ECCV 2020) in JAX/Flax."""

from dnl_jax import blocks, ops
from dnl_jax.blocks import ContextBlock, DisentangledNonLocal, NonLocal

__all__ = ["blocks", "ops", "NonLocal", "DisentangledNonLocal", "ContextBlock"]
__version__ = "0.1.0"
