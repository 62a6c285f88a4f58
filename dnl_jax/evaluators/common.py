"""What every evaluator shares: the one host predict function, this host's share of a split, the
sum over hosts, and the check of an evaluator's config section.

An evaluator is built from one `config.evals.<name>` section and an `EvalContext` (what it runs
on: the model, the split, the driver and the task's `EvalInputs`), and `run(state)` returns its
named metrics. It reads no other config section and imports no task module: what differs
between datasets comes through `EvalContext.inputs`, and the kinds of inputs it accepts are
its `INPUTS`. `every_steps` > 0 runs it at step 0, every
`every_steps` and at the last step; 0 only at the last step of a completed run.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.tasks.base import EvalInputs

PredictFn = Callable[[np.ndarray], Any]


@dataclasses.dataclass
class EvalContext:
    """What the evaluators run on, built by the trainer (or the evaluate command).

    bundle: the task's `ModelBundle` (metrics_fn, finalize_metrics, pad_label, input_key,
      config: the model's resolved settings).
    module: `bundle.module` without a pmap axis, for per-example inference on one device.
    source: the evaluated split, random access (`len`, `[i]` → example dict).
    driver: `eval_step(state, host_batch)` → numpy metric sums over every device and host, and
      `host_variables(state)` → {'params', 'batch_stats'} host numpy (train/parallel.py).
    inputs: the task's `EvalInputs` for the dataset (`Task.eval_inputs`): the kind of examples
      and the hooks that make them model inputs.
    output_dir: where evaluators that write predictions write them (None: nowhere).
    workdir: the training run's directory (None outside the trainer); evaluators whose results
      are files (the COCO results JSON) write them under it.
    between_batches: called before every batch (or every round of per-example evaluation), the
      same number of times on every host; the trainer's raises when the run is preempted.
    """

    bundle: Any
    module: Any
    source: Any
    driver: Any
    inputs: EvalInputs
    output_dir: str | None = None
    workdir: str | None = None
    between_batches: Callable[[], None] = lambda: None


class NonFiniteOutputs(FloatingPointError):
    """The model gave NaN or infinite outputs on evaluation data (the message says how many)."""


def check_finite(count, what: str = "outputs") -> None:
    """Raises NonFiniteOutputs when `count` (of non-finite values, summed over hosts) is > 0:
    an argmax would silently read NaN as class 0."""
    if int(count):
        raise NonFiniteOutputs(
            f"{int(count)} non-finite (NaN or inf) {what} in evaluation; "
            "the metrics would be meaningless, so it stopped."
        )


class Evaluator:
    """Base: `name`, `every_steps`, `run(state) -> {metric: value}`; subclasses declare their
    config keys and defaults in `KEYS` (the only place of the defaults), the kinds of inputs
    they accept in `INPUTS` (`EvalInputs.kind`) and check values in `check`."""

    KEYS: Mapping[str, Any] = {}
    INPUTS: tuple[str, ...] = ()

    def __init__(self, name: str, context: EvalContext, settings: Mapping[str, Any]):
        self.name, self.context = name, context
        self.settings = dict(settings)
        self.every_steps = int(self.settings["every_steps"])

    @classmethod
    def check(
        cls,
        name: str,
        settings: Mapping[str, Any],
        inputs: EvalInputs,
        *,
        num_devices: int,
        num_processes: int,
    ) -> None:
        """Raises ValueError for a bad value (keys are checked by `settings_with_defaults`) or
        one that does not fit the `inputs` or the devices / hosts at hand."""
        every = settings["every_steps"]
        if not isinstance(every, int) or every < 0:
            raise ValueError(
                f"config.evals.{name}.every_steps={every!r} must be an integer "
                ">= 0 (0: only at the end of the run)."
            )

    def due(self, step: int, *, final: bool) -> bool:
        """Whether to run after `step` (step 0: before training)."""
        if final:
            return True
        return self.every_steps > 0 and step % self.every_steps == 0

    def run(self, state) -> dict:
        raise NotImplementedError

    def describe(self, metrics: Mapping[str, Any]) -> str:
        """The console line of `run`'s metrics: the bundle's (`describe_metrics`), for
        evaluators that return the bundle's finalised metrics; others override it."""
        return self.context.bundle.describe_metrics(metrics)

    def predict_fn(self, state) -> PredictFn:
        """`make_predict_fn` of the context's module with `state`'s weights."""
        return make_predict_fn(
            self.context.module,
            self.context.driver.host_variables(state),
            space=getattr(self.context.driver, "space", 1),
        )


def settings_with_defaults(
    name: str, section: Mapping[str, Any], keys: Mapping[str, Any], evaluator_type: str
) -> dict:
    """`section` (without 'type') over `keys`' defaults; ValueError for an unknown key."""
    settings = {k: v for k, v in section.items() if k != "type"}
    for key in settings:
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"config.evals.{name}.{key}: unknown key for an evaluator of type "
                f"{evaluator_type!r}.{hint} Known: {sorted(keys)}."
            )
    return {**keys, **settings}


def make_predict_fn(module, variables: Mapping, *, space: int = 1) -> PredictFn:
    """`inputs [B, ...] -> float32 logits` of `module` with `variables` ({'params',
    'batch_stats'}), jitted: the one predict function of the trainer's per-example evaluations
    and of `python -m dnl_jax.cli.evaluate`. On one local device; with `space` > 1 each input is
    sharded along its second axis (H of images, T of clips) over min(space, local devices) of
    this host's devices (each host infers its own examples), so a full-resolution image needs
    no tiling. The module's compute dtype is kept (model.dtype); the logits are cast to float32
    because the host-side averaging and softmax of bfloat16 would lose precision."""
    space = min(space, jax.local_device_count())
    if space <= 1:
        apply = jax.jit(lambda v, x: module.apply(v, x, train=False)["logits"].astype(jnp.float32))
        return lambda inputs: apply(variables, inputs)
    mesh = jax.make_mesh(
        (1, space),
        ("data", "space"),
        devices=jax.local_devices()[:space],
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
    )
    spec = jax.sharding.PartitionSpec(None, "space")

    def sharded(v, x):
        x = jax.lax.with_sharding_constraint(x, spec)
        return module.apply(v, x, train=False)["logits"].astype(jnp.float32)

    with jax.set_mesh(mesh):
        replicated = jax.device_put(
            variables, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        )
    apply = jax.jit(sharded)

    def predict(inputs):
        with jax.set_mesh(mesh):
            return np.asarray(apply(replicated, inputs))

    return predict


def host_examples(source, between: Callable[[], None] = lambda: None) -> Iterator[dict]:
    """This host's examples of `source`: process_index::process_count (all with one host).
    `between()` is called before each round of one example per host: ceil(n / hosts) times on
    every host, also on hosts that have no example left in the last round."""
    hosts, me = jax.process_count(), jax.process_index()
    for first in range(0, len(source), hosts):
        between()
        if first + me < len(source):
            yield source[first + me]


def sum_over_hosts(tree):
    """Elementwise sum of a tree of host numpy arrays over all processes (itself with one)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(x).sum(0), multihost_utils.process_allgather(tree))


def positive_pair(value) -> tuple[int, int] | None:
    """(h, w) of two positive sizes, or None (for (0, 0) placeholders and other bad values)."""
    value = tuple(value) if value is not None else ()
    if len(value) == 2 and all(int(v) >= 1 for v in value):
        return int(value[0]), int(value[1])
    return None
