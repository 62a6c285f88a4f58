"""Data-parallel drivers: the global-view `jax.jit` driver on a mesh (main path) and `jax.pmap`.

Both wrap the same pure steps (`dnl_jax.train.step`) and expose one interface to the trainer:

    context()                    → context manager the run executes in (jit: the mesh)
    init_state(init_fn)          → the TrainState placed for this driver
    train_step(state, batch)     → (state, metrics); batch = this host's numpy batch [b, ...]
    eval_step(state, batch)      → numpy metric sums over every device and host
    to_checkpoint(state)         → the pytree orbax saves (global arrays / host numpy)
    host_state(state)            → a host numpy copy of the state (logs, figures, results)
    host_variables(state)        → {'params', 'batch_stats'} of host_state, for host inference
    restore_target(abstract)     → what orbax restores into; from_checkpoint(tree) → state

jit: a mesh ('data', 'space') over all devices of all hosts (`config.mesh`; space = 1 by
default); the batch is sharded `P('data')`, and with space > 1 images along H and clips along T,
`P('data', 'space')` (the model's non-local blocks then run `dnl_jax.core.attention.sharded`). Each
host contributes the rows of its data shards through `jax.make_array_from_process_local_data`
(hosts whose devices share data shards load the same rows: `data_process_index/_count`); the
state is created directly with its sharding (replicated for pure data parallelism) by
`jax.jit(init_fn, out_shardings=...)`; XLA inserts the gradient all-reduce and the cross-replica
batch-norm reductions. pmap: the state is replicated on the local devices, the host batch is
reshaped to `[local_devices, b / local_devices, ...]`, reductions use `axis_name='batch'`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

PMAP_AXIS = "batch"
DATA_AXIS = "data"
SPACE_AXIS = "space"


def fetch_replicated(tree):
    """Host numpy copy of a tree of replicated arrays (also across processes, where a plain
    `device_get` refuses arrays that are not fully addressable: any local replica is the value).
    """

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def replica_zero(x) -> np.ndarray:
    """Host copy of replica 0 of a pmapped array `[devices, ...]` → `[...]`: its first local
    shard, read as it is. Indexing `x[0]` would instead compile and run a gather across the
    devices for every leaf (pmap's outputs are `NamedSharding` arrays under JAX's jit-based
    pmap), which on XLA:CPU with many fake devices once aborted the process under load."""
    host = np.asarray(x.addressable_data(0))
    return host[0] if host.ndim == x.ndim else host


def make_mesh(space: int = 1) -> jax.sharding.Mesh:
    """A (data, space) mesh over every device of every process, data = devices / space, both
    axes Auto (sharding constraints and XLA's partitioner place the rest)."""
    if space < 1 or jax.device_count() % space:
        raise ValueError(f"space={space} must be >= 1 and divide the {jax.device_count()} devices.")
    return jax.make_mesh(
        (jax.device_count() // space, space),
        (DATA_AXIS, SPACE_AXIS),
        axis_types=(AxisType.Auto,) * 2,
    )


def data_groups(mesh: jax.sharding.Mesh) -> tuple[int, int]:
    """(index, count): this process holds batch slice `index` of `count` distinct slices (hosts
    whose devices share the same data shards hold the same rows)."""
    mine = sorted(
        {
            row
            for (row, _), device in np.ndenumerate(mesh.devices)
            if device.process_index == jax.process_index()
        }
    )
    per, rows = len(mine), mesh.devices.shape[0]
    if mine != list(range(mine[0], mine[0] + per)) or mine[0] % per or rows % per:
        raise ValueError(
            f"process {jax.process_index()} holds data shards {mine} of {rows}: "
            "not one contiguous block; choose config.mesh.space to divide the "
            "devices per process, or be a multiple of them."
        )
    return mine[0] // per, rows // per


def batch_spec(x, space: int) -> P:
    """`P('data', 'space')` for images `[B, H, ...]` and clips `[B, T, ...]` (and their dense
    labels) when space > 1 divides H (T), else `P('data')` (the model's first constraint, after
    the stem, then shards the positions)."""
    split = space > 1 and np.ndim(x) >= 3 and np.shape(x)[1] % space == 0
    return P(DATA_AXIS, SPACE_AXIS) if split else P(DATA_AXIS)


def create_replicated_state(init_fn: Callable, mesh: jax.sharding.Mesh):
    """`init_fn()` compiled to produce its outputs directly replicated over `mesh`."""
    replicated = NamedSharding(mesh, P())
    shardings = jax.tree.map(lambda _: replicated, jax.eval_shape(init_fn))
    return jax.jit(init_fn, out_shardings=shardings)()


class _HostCopies:
    """The host-copy methods both drivers share (on top of their `to_checkpoint`)."""

    def host_state(self, state):
        """Host numpy copy of `state` (any replica: they are identical)."""
        return fetch_replicated(self.to_checkpoint(state))

    def host_variables(self, state) -> dict:
        """{'params', 'batch_stats'} of `host_state(state)`."""
        host = self.host_state(state)
        return {"params": host.params, "batch_stats": host.batch_stats}


class JitDriver(_HostCopies):
    """Global-view `jax.jit` steps on NamedSharding arrays (see the module docstring)."""

    axis_name = None

    def __init__(self, train_step: Callable, eval_step: Callable, space: int = 1):
        self.mesh = make_mesh(space)
        self.space = space
        self.data_process_index, self.data_process_count = data_groups(self.mesh)
        self.replicated = NamedSharding(self.mesh, P())
        self._train_step = train_step
        self._eval_step = eval_step
        self._jitted_train = self._jitted_eval = None

    def batch_shardings(self, host_batch: dict) -> dict:
        return jax.tree.map(
            lambda x: NamedSharding(self.mesh, batch_spec(x, self.space)), host_batch
        )

    def context(self):
        """The mesh in context for the whole run (`with driver.context(): ...`)."""
        return jax.set_mesh(self.mesh)

    def _compile(self, state_shardings):
        # The batch's shardings are those of the global arrays (`global_batch`).
        if self._train_step is not None:  # None: an evaluation-only driver (the evaluate command)
            self._jitted_train = jax.jit(
                self._train_step,
                in_shardings=(state_shardings, None),
                out_shardings=(state_shardings, self.replicated),
                donate_argnums=0,
            )
        self._jitted_eval = jax.jit(
            self._eval_step, in_shardings=(state_shardings, None), out_shardings=self.replicated
        )

    def state_shardings(self, abstract_state):
        return jax.tree.map(lambda _: self.replicated, abstract_state)

    def init_state(self, init_fn: Callable):
        return create_replicated_state(init_fn, self.mesh)

    def _jitted(self, state):
        if self._jitted_eval is None:  # the state's structure fixes the in/out shardings
            self._compile(self.state_shardings(state))
        return self._jitted_train, self._jitted_eval

    def global_batch(self, host_batch: dict) -> dict:
        """This host's rows → global arrays sharded by `batch_spec`."""
        return jax.tree.map(
            lambda x, sharding: jax.make_array_from_process_local_data(
                sharding, x, (x.shape[0] * self.data_process_count, *x.shape[1:])
            ),
            host_batch,
            self.batch_shardings(host_batch),
        )

    def train_step(self, state, host_batch: dict):
        return self._jitted(state)[0](state, self.global_batch(host_batch))

    def eval_step(self, state, host_batch: dict) -> dict:
        return fetch_replicated(self._jitted(state)[1](state, self.global_batch(host_batch)))

    def to_checkpoint(self, state):
        return state

    def restore_target(self, abstract_state):
        shardings = self.state_shardings(abstract_state)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            shardings,
        )

    def from_checkpoint(self, tree):
        # Restored arrays already carry the target shardings; put them there anyway for trees
        # read from elsewhere (init_from).
        return jax.device_put(tree, self.state_shardings(tree))


class PmapDriver(_HostCopies):
    """Classic `jax.pmap` driver with `axis_name='batch'` (see the module docstring)."""

    axis_name = PMAP_AXIS
    space = 1

    def __init__(self, train_step: Callable, eval_step: Callable, space: int = 1):
        if space != 1:
            raise ValueError(
                f"the pmap driver shards the batch only; mesh space={space} needs "
                "parallelism='jit'."
            )
        self.devices = jax.local_devices()
        self.data_process_index, self.data_process_count = jax.process_index(), jax.process_count()
        # Leading axis over the local devices: how pmap lays out its replicated arguments.
        self._stacked = NamedSharding(
            jax.sharding.Mesh(np.array(self.devices), (PMAP_AXIS,)), P(PMAP_AXIS)
        )
        self._train = jax.pmap(train_step, axis_name=PMAP_AXIS, donate_argnums=0)
        self._eval = jax.pmap(eval_step, axis_name=PMAP_AXIS)

    def context(self):
        return contextlib.nullcontext()

    def _split(self, host_batch: dict) -> dict:
        n = len(self.devices)
        return jax.tree.map(lambda x: np.reshape(x, (n, x.shape[0] // n, *x.shape[1:])), host_batch)

    def init_state(self, init_fn: Callable):
        # The jit driver's initialiser (same program, so its compilation is shared), then
        # stacked per local device.
        mesh = make_mesh()
        with jax.set_mesh(mesh):
            state = create_replicated_state(init_fn, mesh)
        return self.from_checkpoint(fetch_replicated(state))

    def train_step(self, state, host_batch: dict):
        state, metrics = self._train(state, self._split(host_batch))
        return state, jax.tree.map(replica_zero, metrics)

    def eval_step(self, state, host_batch: dict) -> dict:
        return jax.tree.map(replica_zero, self._eval(state, self._split(host_batch)))

    def to_checkpoint(self, state):
        # Replicas are identical (pmean'd gradients, synced batch norm): save replica 0.
        return jax.tree.map(replica_zero, state)

    def restore_target(self, abstract_state):
        device = jax.sharding.SingleDeviceSharding(self.devices[0])
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_state
        )

    def from_checkpoint(self, tree):
        n = len(self.devices)
        return jax.tree.map(
            lambda x: jax.device_put(
                np.broadcast_to(np.asarray(x)[None], (n, *np.shape(x))), self._stacked
            ),
            tree,
        )


def make_driver(parallelism: str, train_step: Callable, eval_step: Callable, space: int = 1):
    """'jit' → JitDriver on a (data, space) mesh, 'pmap' → PmapDriver (space must be 1)."""
    drivers = {"jit": JitDriver, "pmap": PmapDriver}
    if parallelism not in drivers:
        raise ValueError(f"parallelism={parallelism!r}; choose one of {tuple(drivers)}.")
    return drivers[parallelism](train_step, eval_step, space)
