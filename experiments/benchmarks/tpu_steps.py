"""The compiled TPU cases: one attention kernel (forward + backward) and one train step from a
config file, with the jit or the pmap driver, on a TPU topology (see tpu_compile.py)."""

from __future__ import annotations

import importlib.util
import math

# isort: off
import tpu_compile  # sets JAX_PLATFORMS / TPU_SKIP_MDS_QUERY before jax starts
import jax

# isort: on
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dnl_jax import tasks
from dnl_jax.core import attention
from dnl_jax.tasks import for_dataset
from dnl_jax.train import parallel
from dnl_jax.train import step as step_lib
from dnl_jax.train.setup import make_init_fn

DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}


def key_count(grid: tuple[int, ...], subsample: bool) -> int:
    """Keys of a block over `grid` (…, H, W): all positions, or a stride-2 pool over H and W."""
    if not subsample:
        return math.prod(grid)
    return math.prod(grid[:-2]) * math.ceil(grid[-2] / 2) * math.ceil(grid[-1] / 2)


def kernel_case(
    generation: str,
    grid: tuple[int, ...],
    channels: int,
    *,
    whiten: bool,
    subsample: bool,
    dtype: str,
    implementation: str | None = "pallas_tpu",
) -> dict:
    """`dnl_attention` (pairwise + unary, temperature 0.05) and its gradient in q, k, v and the
    unary logits, batch 1, on one chip; plus what `implementation=None` picks for the shape."""
    n, m = math.prod(grid), key_count(grid, subsample)
    mesh = tpu_compile.tpu_mesh(generation, (1,), ("data",))
    sharding = NamedSharding(mesh, P())
    dt = DTYPES[dtype]
    shapes = [(1, n, channels), (1, m, channels), (1, m, channels), (1, m)]
    args = [jax.ShapeDtypeStruct(s, dt, sharding=sharding) for s in shapes]

    def loss(q, k, v, unary):
        out = attention.dnl_attention(
            q, k, v, unary, temperature=0.05, whiten=whiten, implementation=implementation
        )
        return out.astype(jnp.float32).sum()

    def lower():
        with jax.set_mesh(mesh):
            traced = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(*args)
        return str(traced.jaxpr), traced.lower()

    case = tpu_compile.compile_and_measure(lower, generation)
    with jax.set_mesh(mesh):
        auto = attention.select_implementation(*args[:3])
    return {
        "kind": "kernel",
        "grid": list(grid),
        "n": n,
        "m": m,
        "channels": channels,
        "whiten": whiten,
        "subsample": subsample,
        "dtype": dtype,
        "implementation": implementation,
        "auto_selects": auto,
        **case,
    }


def load_config(path: str, **overrides):
    """`get_config()` of a config file, with dotted `overrides` ('data.synthetic.image_size')."""
    spec = importlib.util.spec_from_file_location("tpu_aot_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def _blank_coco_example(data) -> dict:
    """One example in the prepared COCO source's format (data/sources.py) at the recipe's own
    `base_size` (long, short), landscape, with one small instance."""
    long_side, short_side = (int(v) for v in data.detection.base_size)
    return {
        "image": np.zeros((short_side, long_side, 3), np.uint8),
        "image_id": 0,
        "height": short_side,
        "width": long_side,
        "boxes": np.array([[0.0, 0.0, 32.0, 32.0]], np.float32),
        "labels": np.zeros(1, np.int32),
        "category_ids": np.ones(1, np.int32),
        "iscrowd": np.zeros(1, bool),
        "areas": np.array([1024.0], np.float32),
        "masks": np.zeros((1, short_side, long_side), np.uint8),
    }


def _detection_example(task, data) -> dict:
    """The training example the pipeline would give: the real train transform applied to a
    blank COCO example (prepared data), or one drawn scene (synthetic data, model-ready)."""
    transform = task.train_transform(data)
    if transform is None:
        return task.sources(data)[0][0]
    return transform.random_map(_blank_coco_example(data), np.random.default_rng(0))


def abstract_batch(config) -> dict:
    """ShapeDtypeStructs of one global training batch (the bundle contract in
    dnl_jax/tasks/base.py): segmentation and video from the task's example shape, detection
    from one example as the training pipeline makes it (each array's shape and dtype, batched)."""
    task = for_dataset(config.data.name)
    b = int(config.batch_size)
    if task.name == "detection":
        example = _detection_example(task, config.data)
        return {
            k: jax.ShapeDtypeStruct((b, *np.shape(v)), np.asarray(v).dtype)
            for k, v in example.items()
        }
    if task.name not in ("segmentation", "video"):
        raise ValueError(f"task {task.name!r}: its batch is not described here yet.")
    shape = task.example_shape(config.data)
    label = (b,) if task.name == "video" else (b, *shape[:2])
    return {
        task.input_key: jax.ShapeDtypeStruct((b, *shape), jnp.float32),
        "label": jax.ShapeDtypeStruct(label, jnp.int32),
    }


def _step_parts(config, axis_name):
    built = tasks.build(config, axis_name=axis_name)  # the trainer's one build path
    bundle = built.bundle
    schedule = step_lib.learning_rate_schedule(config.optimizer, config.total_steps)
    optimizer = step_lib.make_optimizer(config.optimizer, config.total_steps)
    train_step = step_lib.make_train_step(
        bundle, optimizer, schedule, grad_accum_steps=config.grad_accum_steps, axis_name=axis_name
    )
    state = jax.eval_shape(make_init_fn(optimizer, built, config.seed))
    return train_step, state


def lower_jit_on_mesh(config, mesh, space: int = 1):
    """(jaxpr text, lowered) of the jit driver's train step over `mesh` (axes data × space): the
    state replicated and donated, the batch split as the driver splits it. Used for TPU slices
    here and for compile-only H100s in cuda_aot.py."""
    train_step, state = _step_parts(config, None)
    replicated = NamedSharding(mesh, P())
    state_sh = jax.tree.map(lambda _: replicated, state)
    batch = {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=NamedSharding(mesh, parallel.batch_spec(v, space))
        )
        for k, v in abstract_batch(config).items()
    }
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_sh
    )
    with jax.set_mesh(mesh):  # as JitDriver.context()
        jitted = jax.jit(
            train_step,
            in_shardings=(state_sh, None),
            out_shardings=(state_sh, replicated),
            donate_argnums=0,
        )
        traced = jitted.trace(state, batch)
    return str(traced.jaxpr), traced.lower()


def _lower_jit(config, generation, chips, space):
    mesh = tpu_compile.tpu_mesh(
        generation, (chips // space, space), (parallel.DATA_AXIS, parallel.SPACE_AXIS)
    )
    return lower_jit_on_mesh(config, mesh, space)


def _lower_pmap(config, generation, chips):
    train_step, state = _step_parts(config, parallel.PMAP_AXIS)
    devices = tpu_compile.tpu_mesh(generation, (chips,), ("batch",)).devices.ravel().tolist()

    def stacked(x, split=False):
        shape = (chips, x.shape[0] // chips, *x.shape[1:]) if split else (chips, *x.shape)
        return jax.ShapeDtypeStruct(shape, x.dtype)

    state = jax.tree.map(stacked, state)
    batch = jax.tree.map(lambda x: stacked(x, split=True), abstract_batch(config))
    pmapped = jax.pmap(train_step, axis_name=parallel.PMAP_AXIS, donate_argnums=0, devices=devices)
    return None, pmapped.lower(state, batch)


def step_case(
    config_path: str,
    generation: str,
    chips: int,
    *,
    driver: str = "jit",
    space: int = 1,
    overrides: dict | None = None,
) -> dict:
    """The config's train step at its own crop and global batch on a `chips`-chip slice."""
    config = load_config(config_path, **(overrides or {}))
    if driver == "jit":
        lower = lambda: _lower_jit(config, generation, chips, space)  # noqa: E731
    elif driver == "pmap":
        if space != 1:
            raise ValueError("the pmap driver shards the batch only: space must be 1.")
        lower = lambda: _lower_pmap(config, generation, chips)  # noqa: E731
    else:
        raise ValueError(f"driver={driver!r}; choose 'jit' or 'pmap'.")
    case = tpu_compile.compile_and_measure(lower, generation)
    shape = for_dataset(config.data.name).example_shape(config.data)
    return {
        "kind": "step",
        "config": config_path,
        "overrides": {
            k: list(v) if isinstance(v, tuple) else v for k, v in (overrides or {}).items()
        },
        "model": config.model.name,
        "dtype": config.model.dtype,
        "input": list(shape[:-1]),
        "batch": int(config.batch_size),
        "chips": chips,
        "driver": driver,
        "space": space,
        **case,
    }
