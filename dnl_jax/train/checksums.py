"""A checksum of every array of a checkpoint, saved in the step's own `checksums` item (written
in the same temporary directory as the arrays, so atomically with them) and verified on restore.

The checksum of an array is two 32-bit sums of its bytes read as unsigned words w[i] (the
array's own element width: 1, 2 or 4 bytes; 8-byte elements as two words), in row-major order:
    plain    = sum_i w[i]            mod 2**32
    weighted = sum_i (i + 1) * w[i]  mod 2**32
Integer sums wrap, so the result does not depend on the order of the reduction: it is the same
for any sharding, device or host, and it is computed where the array lives (one jitted
reduction per save, no copy to the host). Random damage inside an array changes `plain` with
probability 1 - 2**-32; `weighted` catches moved or swapped words too. This guards against bytes
changed on disk, not against an attacker.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def tree_checksums(tree) -> dict[str, str]:
    """{array name (`key_name`): 'plain-weighted' in hex} of every array leaf of `tree` (jax or
    numpy arrays; Python scalars count as 0-d arrays)."""
    named = [(key_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    if not named:
        return {}
    sums = jax.device_get(_all_sums([jnp.asarray(leaf) for _, leaf in named]))
    names = [name for name, _ in named]
    return {name: f"{int(s[0]):08x}-{int(s[1]):08x}" for name, s in zip(names, sums, strict=True)}


def verify(tree, saved: dict[str, str], *, where: str, only: tuple[str, ...] = ()) -> None:
    """Raises ChecksumMismatch naming `where` (e.g. 'checkpoint step 40 in DIR') and the first
    array whose checksum differs from `saved`, or that `saved` lists and `tree` lacks. `only`:
    check only the names under these prefixes (e.g. ('params/', 'batch_stats/'))."""
    wanted = {
        name: value
        for name, value in saved.items()
        if not only or any(name.startswith(prefix) for prefix in only)
    }
    actual = tree_checksums(tree)
    for name, value in sorted(wanted.items()):
        if actual.get(name) != value:
            found = actual.get(name, "missing")
            raise ChecksumMismatch(
                f"checksum mismatch in {where}: array {name} reads back as {found}, saved as "
                f"{value} (its bytes changed on disk)"
            )
