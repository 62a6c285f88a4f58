"""The platform a computation is being built for, which is not always the host's.

Ahead-of-time compilation for a TPU topology from a CPU-only host (`jit(...).lower(...)` on a
mesh over `jax.experimental.topologies.get_topology_desc(...)` devices) traces on a host whose
`jax.default_backend()` is 'cpu'. Kernel choices made from the default backend then build the
CPU program (CPU kernels, Pallas in interpret mode) and the TPU compile never sees the TPU kernel.
`compile_platform` asks, in order:

1. the mesh in context: `jax.set_mesh(mesh)` (the jit driver runs inside it), `shard_map` and
   `jax.pmap` (a shard_map over its devices) all set an abstract mesh whose `abstract_device`
   names the platform of the mesh's devices;
2. the arrays passed in: a concrete `jax.Array`'s sharding devices, or a tracer's abstract
   sharding mesh (explicit-sharding mode);
3. `jax.default_backend()`, when nothing above names a platform.

`compile_device` goes one step further, to one device of that platform, for what the platform
alone does not say (an NVIDIA GPU's compute capability): the concrete mesh `jax.set_mesh` put
in context (a deviceless compile's devices, from `get_topology_desc(platform="cuda", ...)`, have
`.compute_capability` too), else a concrete input's device, else the host's first device when the
host's backend is the target's.
"""

from __future__ import annotations

import jax


def _mesh_platform(mesh) -> str | None:
    """The platform of an (abstract) mesh's devices, or None for an empty or device-less mesh."""
    if mesh is None or getattr(mesh, "empty", True):
        return None
    device = getattr(mesh, "abstract_device", None)
    return getattr(device, "platform", None)


def _array_platform(x) -> str | None:
    """The platform of the devices `x` lives on (concrete arrays) or is sharded over (tracers
    with a mesh in their abstract sharding), or None when it does not say."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        devices = x.sharding.device_set
        return getattr(next(iter(devices)), "platform", None) if devices else None
    sharding = getattr(jax.typeof(x), "sharding", None) if isinstance(x, jax.Array) else None
    return _mesh_platform(getattr(sharding, "mesh", None))


def compile_platform(*arrays) -> str:
    """'cpu', 'gpu' or 'tpu': where the computation now being traced will run (see the module
    docstring for the order of the sources asked). `arrays`: the operands, optional."""
    found = _mesh_platform(jax.sharding.get_abstract_mesh())
    for x in arrays:
        if found is not None:
            break
        found = _array_platform(x)
    return found or jax.default_backend()


def _concrete_mesh():
    """The concrete mesh that `jax.set_mesh` put in context, or None. Read through JAX's
    private accessor: the public `jax.sharding.get_mesh` refuses inside a trace, which is where
    kernels are chosen. A JAX without it gives None (no device known: as before this existed)."""
    try:
        from jax._src.mesh import get_concrete_mesh
    except ImportError:
        return None
    mesh = get_concrete_mesh()
    return None if mesh is None or getattr(mesh, "empty", True) else mesh


def compile_device(*arrays):
    """One device of the platform `compile_platform(*arrays)` names (the mesh in context, if
    any, also fixes its device kind), or None when nothing concrete is known, e.g. an abstract
    mesh alone (`jax.sharding.use_abstract_mesh`) or a TPU target on a CPU host."""
    platform = compile_platform(*arrays)
    abstract = jax.sharding.get_abstract_mesh()
    kind = None if abstract.empty else getattr(abstract.abstract_device, "device_kind", None)

    def candidates():
        mesh = _concrete_mesh()
        if mesh is not None:
            yield mesh.devices.flat[0]
        for x in arrays:
            if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
                yield from x.sharding.device_set
        if jax.default_backend() == platform:
            yield jax.devices()[0]

    for device in candidates():
        if getattr(device, "platform", None) == platform and kind in (None, device.device_kind):
            return device
    return None
