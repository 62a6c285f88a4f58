"""`step.make_train_step`: one micro-batch runs without a loop (XLA:CPU is much slower on
convolution gradients inside one), and must equal the looped accumulation it replaces."""

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.models import init_variables
from dnl_jax.tasks import get_model
from dnl_jax.train import step as step_lib
from dnl_jax.train.config import base_config


def _state_and_step(bundle, images, grad_accum_steps):
    opt = base_config().optimizer
    optimizer = step_lib.make_optimizer(opt, 10)
    variables = init_variables(bundle.module, jax.random.key(0), images[:1])
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    train_step = step_lib.make_train_step(
        bundle,
        optimizer,
        step_lib.learning_rate_schedule(opt, 10),
        grad_accum_steps=grad_accum_steps,
    )
    return state, jax.jit(train_step)


def test_single_micro_batch_without_loop_equals_looped_accumulation():
    """Batch [a, b] in one micro-batch vs [a, b, b, a] in two (micro-batches are examples
    i, i+2: [a, b] and [b, a]): same batch statistics, loss and mean gradient, so the same
    update. Dropout is off because each micro-batch draws its own dropout key. The running
    batch-norm averages see one momentum-0.9 update per micro-batch: 0.9·old + 0.1·s once,
    0.81·old + 0.19·s twice, so both give back the same batch statistic s."""
    bundle = get_model("dnl_tiny", 5, dropout_rate=0.0)
    images = jax.random.normal(jax.random.key(2), (2, 24, 24, 3))
    labels = jax.random.randint(jax.random.key(3), (2, 24, 24), 0, 5)
    results = []
    for accum, index in ((1, jnp.array([0, 1])), (2, jnp.array([0, 1, 1, 0]))):
        state, train_step = _state_and_step(bundle, images, accum)
        new_state, metrics = train_step(state, {"image": images[index], "label": labels[index]})
        results.append((new_state.params, new_state.batch_stats, metrics["loss"]))
    (params_1, stats_1, loss_1), (params_2, stats_2, loss_2) = results
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)  # noqa: E731
    close(loss_1, loss_2)
    jax.tree.map(close, params_1, params_2)
    old = state.batch_stats
    jax.tree.map(
        lambda one, two, o: close((one - 0.9 * o) / 0.1, (two - 0.81 * o) / 0.19),
        stats_1,
        stats_2,
        old,
    )
    changed = jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params_1, state.params)
    )
    assert np.isfinite(loss_1) and any(changed), "the step left every parameter unchanged"
