"""The optimizer: mmseg's poly schedule with warm-up and torch's SGD with L2 weight decay."""

import numpy as np
import optax

from dnl_jax.train import step as step_lib
from dnl_jax.train.config import base_config


def test_poly_schedule_with_warmup_matches_mmseg_formula():
    opt = base_config().optimizer
    opt.lr, opt.min_lr, opt.poly_power, opt.warmup_steps, opt.warmup_ratio = 0.1, 1e-3, 0.9, 5, 0.1
    schedule = step_lib.learning_rate_schedule(opt, total_steps=25)
    np.testing.assert_allclose(schedule(0), 0.01, rtol=1e-6)
    np.testing.assert_allclose(schedule(5), 0.1, rtol=1e-6)
    for t in (7, 15, 24):
        expected = (0.1 - 1e-3) * (1 - (t - 5) / 20) ** 0.9 + 1e-3
        np.testing.assert_allclose(schedule(t), expected, rtol=1e-5)


def test_optimizer_is_torch_sgd_with_l2_weight_decay():
    opt = base_config().optimizer
    opt.lr, opt.min_lr, opt.weight_decay, opt.momentum = 0.1, 0.1, 0.01, 0.9  # constant lr
    optimizer = step_lib.make_optimizer(opt, total_steps=10)
    params = {"w": np.array([1.0, -2.0])}
    state = optimizer.init(params)
    momentum, value = np.zeros(2), params["w"].copy()
    for grad in (np.array([0.5, 0.5]), np.array([-1.0, 2.0])):
        updates, state = optimizer.update({"w": grad}, state, params)
        params = optax.apply_updates(params, updates)
        momentum = 0.9 * momentum + grad + 0.01 * value  # torch.optim.SGD
        value = value - 0.1 * momentum
        np.testing.assert_allclose(params["w"], value, rtol=1e-6)
