"""Shared by the training tests: the tiny config and a persistent XLA compilation cache.

Compiling the tiny model's steps dominates these tests on CPU; many runs compile the very same
programs (a resumed run, the same config in another test or subprocess), which the persistent
cache then loads instead of recompiling. The cache only stores compiled programs, keyed by their
HLO, JAX version and options, so it cannot change a result.
"""

import os
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from dnl_jax.train.config import base_config

CACHE_DIR = os.environ.get(
    "DNL_JAX_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "dnl_jax_test_xla_cache")
)
# The same settings for subprocesses, through JAX's environment variables.
CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}


def enable_compilation_cache() -> None:
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


# Every e2e run uses these values unless a test needs another; equal configs compile equal
# programs, so keep overrides to what a test is about.
TINY = {
    "model.name": "dnl_tiny",
    "data.synthetic.image_size": 32,
    "data.num_classes": 5,
    "data.synthetic.num_train": 64,
    "data.synthetic.num_val": 16,
    "batch_size": 8,
    "evals.val.batch_size": 8,
    "total_steps": 4,
    "evals.val.every_steps": 100,
    "checkpoint.every_steps": 2,
    "progress_bar": False,
    "curves_figure": False,
    "attention_figure": False,
}


def tiny_config(**overrides):
    config = base_config()
    config.update_from_flattened_dict({**TINY, **overrides})
    return config


def restore(path):
    """Read back as the trainer does (a PyTree checkpoint, numpy leaves)."""
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
        checkpointer.metadata(path).item_metadata.tree,
    )
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
