"""One SGD step of the tiny Mask R-CNN: jit on the global batch == pmap over 2 devices."""

import jax
import jax.numpy as jnp
import numpy as np
from detection_fixtures import FAST_COMPILE, fast_jit, tiny_batch, tiny_mask_rcnn

from dnl_jax.models.detection import mask_rcnn

LEARNING_RATE = 0.02


def _step(model, trainable, batch_stats, axis_name=None):
    """SGD on the trainable parameters; the backbone's batch norm is frozen, so its statistics
    are constants."""

    def step(params, batch, rng):
        def loss_fn(p):
            return model.apply(
                {"params": p, "batch_stats": batch_stats},
                batch,
                method=model.loss,
                rngs={"sampler": rng},
            )

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = jax.tree.map(lambda g, keep: g * keep, grads, trainable)
        if axis_name is not None:
            grads, loss = jax.lax.pmean((grads, loss), axis_name)
        new = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)
        return new, loss, parts

    return step


def test_train_step_jit_equals_pmap_and_freezes_stage_one():
    """Each image samples with a key folded from its id and has 4 instances, so the sampled
    counts per image match and per-device normalisation equals the global one."""
    model = tiny_mask_rcnn()
    batch = tiny_batch()
    variables = fast_jit(lambda key, x: model.init(key, x, method=model.build))(
        jax.random.key(0), batch["image"][:1]
    )
    params, stats = variables["params"], variables["batch_stats"]
    trainable = jax.tree.map(float, mask_rcnn.frozen_stage_mask(params))
    rng = jax.random.key(1)
    new_jit, loss_jit, parts = fast_jit(_step(model, trainable, stats))(params, batch, rng)
    for name, value in parts.items():
        assert np.isfinite(float(value)), name
    assert float(parts["loss_mask"]) > 0 and float(parts["loss_rpn_bbox"]) > 0

    devices = jax.devices()[:2]
    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)  # noqa: E731
    shard = jax.tree.map(lambda x: x.reshape((2, 1) + x.shape[1:]), batch)
    pmapped = jax.pmap(_step(model, trainable, stats, "batch"), axis_name="batch", devices=devices)
    args = (replicate(params), shard, replicate(rng))
    new_pmap, loss_pmap, _ = pmapped.lower(*args).compile(FAST_COMPILE)(*args)
    np.testing.assert_allclose(loss_pmap[0], loss_jit, rtol=1e-5)
    first = jax.tree.map(lambda x: x[0], new_pmap)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), first, new_jit
    )

    backbone_old, backbone_new = params["backbone"], new_jit["backbone"]
    np.testing.assert_array_equal(
        backbone_new["layer1_0"]["conv1"]["kernel"], backbone_old["layer1_0"]["conv1"]["kernel"]
    )
    assert not jnp.array_equal(
        backbone_new["layer2_0"]["conv1"]["kernel"], backbone_old["layer2_0"]["conv1"]["kernel"]
    )
