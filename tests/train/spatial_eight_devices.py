"""Spatial parallelism on 8 fake CPU devices: sharded == unsharded, float32.

Run by tests/train/test_spatial.py in a subprocess (`pytest --noconftest`, JAX_NUM_CPU_DEVICES=8):
the suite's own processes have 4 devices. Relative errors are max|sharded − reference| /
max|reference| per array, and must be <= 1e-5; an array whose values are all below 1/10 of the
largest value of its tree (outputs and gradients together) is measured against that tenth: gradients
that are zero in exact arithmetic (the value conv's bias before a training-mode batch norm, the key
conv's bias under a softmax) are float noise of the size of the terms they sum.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dnl_jax.core import blocks, blocks_official
from dnl_jax.core.attention import sharded as sharded_attention
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.evaluators.common import make_predict_fn
from dnl_jax.evaluators.segmentation import confusion_matrix
from dnl_jax.evaluators.segmentation_inference import predict_scores
from dnl_jax.models.metrics import metrics_from_confusion
from dnl_jax.tasks import get_model
from dnl_jax.train import parallel
from dnl_jax.train import step as step_lib
from dnl_jax.train.config import base_config

TOLERANCE = 1e-5


def relative_errors(reference, other) -> list[float]:
    floor = 0.1 * max(float(np.max(np.abs(x))) for x in jax.tree.leaves(reference))

    def error(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), floor, 1e-30))

    return jax.tree.leaves(jax.tree.map(error, reference, other))


def assert_close(reference, other):
    errors = relative_errors(reference, other)
    assert max(errors) <= TOLERANCE, f"relative errors {sorted(errors)[-3:]}"


def test_eight_devices():
    assert jax.device_count() == 8


# ------------------------------------------------------------------------------ blocks
BLOCKS = {
    "nonlocal": blocks.NonLocal(),
    "nonlocal_dot_product": blocks.NonLocal(mode="dot_product"),
    "dnl": blocks.DisentangledNonLocal(),
    "dnl_no_whiten": blocks.DisentangledNonLocal(whiten=False),
    # The decomposition's plain non-local special case: no whitening, no unary term, T = 1.
    "dnl_as_plain_nonlocal": blocks.DisentangledNonLocal(
        whiten=False, unary=False, temperature=1.0
    ),
    "dnl_unary_only": blocks.DisentangledNonLocal(pairwise=False),
    "dnl_sub_sample": blocks.DisentangledNonLocal(sub_sample=True),
    "dnl_chunked_kernel": blocks.DisentangledNonLocal(implementation="chunked"),
    "official_in": blocks_official.OfficialDisentangledNonLocal(),
    "official_nowd": blocks_official.OfficialDisentangledNonLocal(
        **blocks_official.OFFICIAL_VARIANTS["nowd"]
    ),
    "context_att": blocks.ContextBlock(),
    "context_avg": blocks.ContextBlock(pooling="avg", fusion_types=("channel_add", "channel_mul")),
}
# (name, shape): the leading spatial axis (H or T) divisible by the 4 space shards or not.
SHAPES = {
    "2d": (2, 8, 6, 16),
    "2d_uneven": (2, 7, 5, 16),
    "3d": (2, 4, 4, 3, 16),
    "3d_uneven": (2, 3, 4, 4, 16),
}
# Every block on an uneven image and a divisible clip with the automatic strategy (all-gather
# at these sizes); the ring and the other shapes on the blocks with a pairwise term.
CASES = [(name, shape, "auto") for name in BLOCKS for shape in ("2d_uneven", "3d")] + [
    ("dnl", "2d", "auto"),
    ("dnl", "3d_uneven", "auto"),
    ("dnl", "2d", "ring"),
    ("dnl", "3d_uneven", "ring"),
    ("nonlocal", "2d_uneven", "ring"),
    ("official_in", "3d_uneven", "ring"),
]
MESH = functools.partial(
    jax.make_mesh, (2, 4), ("data", "space"), axis_types=(jax.sharding.AxisType.Auto,) * 2
)


def _value_and_grads(module: nn.Module, variables, x):
    """Σ sin(block(x)) and its gradients with respect to the parameters and the input. Batch
    norm in inference mode: in training mode the unary-only block's output, constant over the
    positions, would be normalised by its spread over 2 samples, which amplifies float32
    rounding ~1000-fold (sharded batch statistics are checked by the train steps below)."""

    def loss(params, x):
        out = module.apply({**variables, "params": params}, x, train=False)
        return jnp.sum(jnp.sin(out)), out

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)


def _randomised(variables):
    """The initial variables with every parameter redrawn (zero-initialised output norms and
    gammas would hide the attention from the output)."""
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(7), len(leaves))
    leaves = [
        0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=False)
    ]
    return {**variables, "params": jax.tree.unflatten(tree, leaves)}


@pytest.mark.parametrize("name, shape, strategy", CASES)
def test_sharded_block_equals_unsharded(name, shape, strategy, monkeypatch):
    if strategy == "ring":  # nothing fits the all-gather budget
        monkeypatch.setattr(sharded_attention, "_ALL_GATHER_MAX_BYTES", 0)
    module = BLOCKS[name]
    x = jax.random.normal(jax.random.key(1), SHAPES[shape])
    variables = _randomised(module.init(jax.random.key(0), x))
    reference = jax.jit(functools.partial(_value_and_grads, module))(variables, x)
    mesh = MESH()
    with jax.set_mesh(mesh):
        assert sharded_attention.space_shards() == 4
        spec = P("data", "space") if x.shape[1] % 4 == 0 else P("data")
        sharded = jax.jit(functools.partial(_value_and_grads, module))(
            variables, jax.device_put(x, NamedSharding(mesh, spec))
        )
    assert_close(reference, sharded)


# ------------------------------------------------------------------------------ train steps
def _driver_steps(model, space, batches, init_shape):
    """Train steps of the jit driver on a (8 / space, space) mesh from one init, one per batch:
    (bundle, [host state before and after each step], [metrics of each step])."""
    bundle = get_model(model, 5, dropout_rate=0.0)
    opt = base_config().optimizer
    optimizer = step_lib.make_optimizer(opt, 10)
    train_step = step_lib.make_train_step(
        bundle, optimizer, step_lib.learning_rate_schedule(opt, 10)
    )
    driver = parallel.JitDriver(train_step, step_lib.make_eval_step(bundle), space=space)

    def init_fn():
        variables = bundle.module.init(
            {"params": jax.random.key(0)}, jnp.zeros(init_shape), train=True
        )
        return step_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=optimizer.init(variables["params"]),
            rng=jax.random.key_data(jax.random.key(2)),
        )

    # The step's own loss (global batch), differentiated on its own for the gradients.
    gradient = jax.jit(jax.grad(step_lib._make_share_of_loss(bundle, None), has_aux=True))
    keys = {"dropout": jax.random.key(3), "sampler": jax.random.key(4)}
    with driver.context():
        state = driver.init_state(init_fn)
        states, metrics = [driver.host_state(state)], []
        for inputs, labels in batches:
            batch = {bundle.input_key: inputs, "label": labels}
            if len(states) == 1:
                grads = parallel.fetch_replicated(
                    gradient(
                        state.params, state.batch_stats, driver.global_batch(batch), keys, None
                    )[0]
                )
            state, m = driver.train_step(state, batch)
            states.append(driver.host_state(state))
            metrics.append(parallel.fetch_replicated(m))
        return bundle, states, metrics, grads


def _compare_steps(model, batches, init_shape):
    """data=8 versus data=2 × space=4: the first step's gradients, every step's loss and gradient
    norm, and the parameters and statistics after every step. Returns the data=8 run."""
    runs = {space: _driver_steps(model, space, batches, init_shape) for space in (1, 4)}
    (_, reference, reference_metrics, reference_grads) = runs[1]
    (_, sharded, sharded_metrics, sharded_grads) = runs[4]
    assert_close(reference_grads, sharded_grads)
    for ref, shard in zip(reference_metrics, sharded_metrics, strict=False):
        assert_close((ref["loss"], ref["grad_norm"]), (shard["loss"], shard["grad_norm"]))
    for ref, shard in zip(reference[1:], sharded[1:], strict=False):
        assert_close((ref.params, ref.batch_stats), (shard.params, shard.batch_stats))
    return runs[1]


@pytest.fixture(scope="module")
def segmentation_run():
    """Two steps of the tiny DNL segmentor on synthetic scenes (40×40: the stride-8 features
    are 5×5, so 4 space shards need padding), compared, and the data-parallel run returned."""
    source = SyntheticSegmentation(16, split="train", image_size=40, num_classes=5, seed=0)
    examples = [source[i] for i in range(16)]
    batches = [
        (
            np.stack([e["image"] for e in examples[i : i + 8]]),
            np.stack([e["label"] for e in examples[i : i + 8]]),
        )
        for i in (0, 8)
    ]
    return _compare_steps("dnl_tiny", batches, (2, 40, 40, 3))


def test_segmentor_train_step_data2_space4_equals_data8(segmentation_run):
    _, states, metrics, _ = segmentation_run
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert max(relative_errors(states[0].params, states[-1].params)) > 1e-3  # it did train


def test_video_train_step_sharded_along_time_equals_data_parallel():
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((8, 8, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 8).astype(np.int32)
    _compare_steps("dnl_i3d_tiny", [(clips, labels)], (2, 8, 32, 32, 3))


# ------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_sharded_whole_image_evaluation_equals_unsharded(segmentation_run, mode):
    """The trained state's mIoU on synthetic val scenes at 44×52 (not a multiple of the 4
    shards after the stride-8 backbone) with the image sharded along H over 4 devices."""
    bundle, states, _, _ = segmentation_run
    state = states[-1]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    source = SyntheticSegmentation(4, split="val", image_size=52, num_classes=5, seed=1)
    images = np.stack([source[i]["image"][:44] for i in range(4)])
    labels = np.stack([source[i]["label"][:44] for i in range(4)])
    inference = dict(mode=mode, crop_size=(40, 40), stride=(24, 24))
    results = {}
    for space in (1, 4):
        scores = predict_scores(
            make_predict_fn(bundle.module, variables, space=space), images, **inference
        )
        confusion = confusion_matrix(np.argmax(scores, -1), labels, 5)
        results[space] = scores, metrics_from_confusion(confusion)["miou"]
    assert_close(results[1][0], results[4][0])
    assert results[1][1] == results[4][1]
