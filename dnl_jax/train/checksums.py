"""A checksum of every array of a checkpoint, saved in the step's own `checksums` item (written
in the same temporary directory as the arrays, so atomically with them) and verified on restore.

The checksum of an array is two 32-bit sums of its bytes read as unsigned words w[i] (the
array's own element width: 1, 2 or 4 bytes; 8-byte elements as two words), in row-major order:
    plain    = sum_i w[i]            mod 2**32
    weighted = sum_i (i + 1) * w[i]  mod 2**32
Integer sums wrap, so the result does not depend on the order of the reduction: it is the same
for any sharding, device or host. An array this process holds whole is summed on the host in
numpy (orbax copies it there to write it anyway), as two plain reductions over the words viewed
as [rows, 1024] (`weighted` = 1024 · Σ_r r·rowsum_r + Σ_c (c + 1)·colsum_c), with no compile; an
array sharded over several processes is summed where it lives by one jitted reduction. Random
damage inside an array changes `plain` with
probability 1 - 2**-32; `weighted` catches moved or swapped words too. This guards against bytes
changed on disk, not against an attacker.
"""

from __future__ import annotations

import concurrent.futures
import os

import jax
import jax.numpy as jnp
import numpy as np

# Name of the checkpoint item (orbax Composite) that holds {array name: checksum}.
ITEM = "checksums"


class ChecksumMismatch(ValueError):
    """An array read back differs from the one saved (the message names step and array)."""


def key_name(path) -> str:
    """'params/backbone/conv/kernel': a tree path by its plain key names (the same for the
    TrainState the trainer saves and the nested dict orbax reads back)."""
    parts = []
    for key in path:
        for attribute in ("name", "key", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _words(array):
    """The array's bytes as unsigned 32-bit words, one per element (8-byte: [..., 2])."""
    if array.dtype == jnp.bool_:
        array = array.astype(jnp.uint8)
    width = jnp.dtype(array.dtype).itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(array, unsigned).astype(jnp.uint32)


def _sums(array) -> jax.Array:
    """[2] uint32: (plain, weighted) of the module docstring, without reshaping the array (a
    sharded array keeps its sharding)."""
    words = _words(array)
    position = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(words.ndim)):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, dim) * jnp.uint32(
            stride % 2**32
        )
        stride *= words.shape[dim]
    plain = jnp.sum(words, dtype=jnp.uint32)
    return jnp.stack([plain, jnp.sum(words * (position + 1), dtype=jnp.uint32)])


@jax.jit
def _all_sums(leaves: list) -> list:
    return [_sums(leaf) for leaf in leaves]


_COLUMNS = 1024
_THREADS = min(8, os.cpu_count() or 1)
_WIDE = np.uint64  # sums mod 2**64 reduce to the same values mod 2**32


def host_sums(array: np.ndarray) -> tuple[int, int]:
    """(plain, weighted) of the module docstring for a host array."""
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    width = array.dtype.itemsize
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[width]
    words = array.reshape(-1).view(unsigned)
    rows = words.size // _COLUMNS
    block = words[: rows * _COLUMNS].reshape(rows, _COLUMNS)
    tail = words[rows * _COLUMNS :].astype(_WIDE)
    with np.errstate(over="ignore"):
        row_sums = block.sum(axis=1, dtype=_WIDE)
        column_sums = block.sum(axis=0, dtype=_WIDE)
        plain = row_sums.sum(dtype=_WIDE) + tail.sum(dtype=_WIDE)
        weighted = (
            _WIDE(_COLUMNS) * (np.arange(rows, dtype=_WIDE) * row_sums).sum(dtype=_WIDE)
            + (np.arange(1, _COLUMNS + 1, dtype=_WIDE) * column_sums).sum(dtype=_WIDE)
            + (np.arange(rows * _COLUMNS + 1, words.size + 1, dtype=_WIDE) * tail).sum(dtype=_WIDE)
        )
    return int(plain) % 2**32, int(weighted) % 2**32


def tree_checksums(tree) -> dict[str, str]:
    """{array name (`key_name`): 'plain-weighted' in hex} of every array leaf of `tree` (jax or
    numpy arrays; Python scalars count as 0-d arrays)."""
    named = [(key_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    sharded = [
        (name, leaf)
        for name, leaf in named
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
    ]
    on_hosts = {name for name, _ in sharded}
    whole = [(name, leaf) for name, leaf in named if name not in on_hosts]
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:  # numpy releases the GIL
        results = pool.map(lambda leaf: host_sums(np.asarray(leaf)), [leaf for _, leaf in whole])
        sums = dict(zip([name for name, _ in whole], results, strict=True))
    if sharded:
        on_device = jax.device_get(_all_sums([leaf for _, leaf in sharded]))
        sums.update(
            (name, (int(s[0]), int(s[1]))) for (name, _), s in zip(sharded, on_device, strict=True)
        )
    return {name: f"{sums[name][0]:08x}-{sums[name][1]:08x}" for name, _ in named}


def verify(tree, saved: dict[str, str], *, where: str) -> None:
    """Raises ChecksumMismatch naming `where` (e.g. 'checkpoint step 40 in DIR') and the first
    array whose checksum differs from `saved`, or that `saved` lists and `tree` lacks."""
    actual = tree_checksums(tree)
    for name, value in sorted(saved.items()):
        if actual.get(name) != value:
            found = actual.get(name, "missing")
            raise ChecksumMismatch(
                f"checksum mismatch in {where}: array {name} reads back as {found}, saved as "
                f"{value} (its bytes changed on disk)"
            )
