"""One loss definition whatever the split: the normalisers, per-image OHEM, the train
step's global sums (jit == pmap on 4 fake devices == gradient accumulation, with ignore pixels,
OHEM and class weights), align_corners resizes against PyTorch, weight-decay multipliers by
name, the synthetic ignore rectangle, the finiteness flag and out-of-range labels."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from train_testing import enable_compilation_cache, tiny_config

from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.models import losses
from dnl_jax.models.segmentor import resize_bilinear
from dnl_jax.tasks import get_model
from dnl_jax.train import step as step_lib
from dnl_jax.train.checkpoint import load_variables
from dnl_jax.train.config import base_config
from dnl_jax.train.trainer import train_and_evaluate

enable_compilation_cache()

K = 5


# ------------------------------------------------------------------------------------- losses
def test_normalisers_kept_and_all_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, K)).astype(np.float32)
    labels = rng.integers(0, K, size=(2, 5, 6))
    labels[0, :2] = 255
    weights = np.array([0.5, 1.0, 2.0, 1.5, 0.25])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = labels != 255
    nll = -np.take_along_axis(log_probs, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    w = keep * weights[np.where(keep, labels, 0)]
    for normalizer, count in (("kept", w.sum()), ("all", labels.size)):
        total, got_count = losses.pixel_cross_entropy_sum(
            jnp.asarray(logits), jnp.asarray(labels), class_weights=weights, normalizer=normalizer
        )
        np.testing.assert_allclose(total, (w * nll).sum(), rtol=1e-5)
        np.testing.assert_allclose(got_count, count, rtol=1e-6)


def test_without_ignore_pixels_kept_is_the_plain_mean():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, K)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, K, size=(2, 4, 4)))
    plain = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))
    for normalizer in losses.NORMALIZERS:  # no ignore pixel: both normalisers agree
        np.testing.assert_allclose(
            losses.pixel_cross_entropy(logits, labels, normalizer=normalizer), plain, rtol=1e-6
        )


def test_ohem_min_kept_is_per_image():
    """Image 0 is confidently right, image 1 wrong: per image, each keeps >= min_kept."""
    labels = jnp.zeros((2, 4, 4), jnp.int32)
    logits = jnp.zeros((2, 4, 4, K)).at[0, ..., 0].set(10.0).at[1, ..., 1].set(10.0)
    valid = losses.valid_pixels(labels, K)
    keep = losses.ohem_keep_mask(logits, labels, valid, thresh=0.7, min_kept=5)
    assert int(keep[0].sum()) >= 5 and int(keep[1].sum()) == 16


def test_out_of_range_labels_are_counted_not_learned_from():
    labels = jnp.array([[[0, 255, 7, -1]]])
    assert int(losses.out_of_range_pixels(labels, K)) == 2
    logits = jnp.zeros((1, 1, 4, K))
    _, count = losses.pixel_cross_entropy_sum(logits, labels)
    assert float(count) == 1.0


def test_bad_normaliser_names_the_choices():
    with pytest.raises(ValueError, match="loss_normalizer='mean'.*'kept'.*'all'"):
        get_model("dnl_tiny", K, loss_normalizer="mean")


# ------------------------------------------------------------------------------------ resize
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(37, 19), (3, 4), (1, 6)])
def test_resize_matches_torch_interpolate(align_corners, size):
    x = np.random.default_rng(2).normal(size=(2, 7, 9, 3)).astype(np.float32)
    expected = (
        torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            size=size,
            mode="bilinear",
            align_corners=align_corners,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    got = resize_bilinear(jnp.asarray(x), size, align_corners=align_corners)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_align_corners_reaches_the_segmentor():
    assert get_model("dnl_tiny", K, align_corners=True).module.align_corners is True
    assert get_model("dnl_tiny", K).module.align_corners is False
    with pytest.raises(ValueError, match="align_corners must be True or False"):
        get_model("dnl_tiny", K, align_corners="yes")


# ------------------------------------------------------------------------- weight decay
def test_weight_decay_multiplier_follows_mmengine_custom_keys():
    """Substring match, longest pattern first (equal lengths alphabetically), 1 otherwise."""
    pairs = (("head", 2.0), ("decode_head", 3.0), ("theta", 0.0), ("aaaa", 7.0), ("conv", 5.0))
    rule = step_lib.weight_decay_multiplier
    assert rule("decode_head/dnl_block/theta/conv/kernel", pairs) == 3.0  # longest wins
    assert rule("auxiliary_head/convs_0/conv/kernel", pairs) == 5.0  # 'conv' < 'head' (a-z)
    assert rule("backbone/layer1/theta", pairs) == 0.0
    assert rule("backbone/stem_0/bn/scale", pairs) == 1.0


def test_optimizer_scales_weight_decay_per_parameter():
    opt = base_config().optimizer
    opt.update(
        dict(
            lr=1.0,
            momentum=0.0,
            min_lr=1.0,
            weight_decay=0.1,
            weight_decay_multipliers=(("theta", 0.0), ("phi", 0.5)),
        )
    )
    params = {
        "block": {
            "theta": {"kernel": jnp.ones(3)},
            "phi": {"kernel": jnp.ones(3)},
            "g": {"kernel": jnp.ones(3)},
        }
    }
    optimizer = step_lib.make_optimizer(opt, 10)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero, optimizer.init(params), params)
    got = {name: float(leaf["kernel"][0]) for name, leaf in updates["block"].items()}
    assert got == pytest.approx({"theta": 0.0, "phi": -0.05, "g": -0.1})
    opt.weight_decay_multipliers = (("thetaa", 0.0),)
    with pytest.raises(ValueError, match=r"\['thetaa'\] match no parameter"):
        step_lib.make_optimizer(opt, 10).init(params)
    opt.weight_decay_multipliers = (("theta", -1.0),)
    with pytest.raises(ValueError, match="weight_decay_multipliers"):
        step_lib.make_optimizer(opt, 10)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_ignore_fraction_is_one_rectangle_over_the_same_scene():
    plain = SyntheticSegmentation(4, image_size=32, num_classes=K)
    holed = SyntheticSegmentation(4, image_size=32, num_classes=K, ignore_fraction=0.25)
    for index in range(4):
        a, b = plain[index], holed[index]
        np.testing.assert_array_equal(a["image"], b["image"])
        ignored = b["label"] == 255
        rows, cols = np.nonzero(ignored)
        box = ignored[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # one filled rectangle
        assert abs(ignored.sum() - 256) <= 16  # 0.25 of 32x32, up to the aspect's rounding
        np.testing.assert_array_equal(a["label"][~ignored], b["label"][~ignored])
    with pytest.raises(ValueError, match="config.data.synthetic.ignore_fraction"):
        SyntheticSegmentation(4, ignore_fraction=1.0)


# ---------------------------------------------------------------- the step, however split
class _TinySegmentor(nn.Module):
    """Two conv layers, main and auxiliary logits: the real loss wiring compiles fast."""

    @nn.compact
    def __call__(self, x, train=False):
        hidden = nn.relu(nn.Conv(8, (3, 3))(x))
        outputs = {"logits": nn.Conv(K, (1, 1), name="decode")(hidden)}
        if train:
            outputs["aux_logits"] = nn.Conv(K, (1, 1), name="aux")(hidden)
        return outputs


def _bundle(**overrides):
    settings = dict(ohem=dict(thresh=0.7, min_kept=40), class_weights=(0.5, 1.0, 2.0, 1.5, 0.8))
    bundle = get_model("dnl_tiny", K, **{**settings, **overrides})
    return dataclasses.replace(bundle, module=_TinySegmentor())


def _batch(size=8, image_size=12):
    source = SyntheticSegmentation(size, image_size=image_size, num_classes=K, ignore_fraction=0.3)
    examples = [source[i] for i in range(size)]
    labels = np.stack([e["label"] for e in examples])
    labels[:2, :, : image_size // 2] = 255  # devices 0 and the others differ a lot
    return {
        "image": jnp.asarray(np.stack([e["image"] for e in examples])),
        "label": jnp.asarray(labels),
    }


def _run(bundle, batch, *, accum, pmap, steps=3):
    opt = base_config().optimizer
    opt.update(dict(lr=0.5, weight_decay=0.0))
    optimizer = step_lib.make_optimizer(opt, 10)
    params = bundle.module.init(jax.random.key(0), batch["image"][:1], train=True)["params"]
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={},
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    train_step = step_lib.make_train_step(
        bundle,
        optimizer,
        step_lib.learning_rate_schedule(opt, 10),
        grad_accum_steps=accum,
        axis_name="batch" if pmap else None,
    )
    if pmap:
        devices = 4
        state = jax.tree.map(lambda x: jnp.broadcast_to(x, (devices, *x.shape)), state)
        batch = jax.tree.map(lambda x: x.reshape(devices, -1, *x.shape[1:]), batch)
        run = jax.pmap(train_step, axis_name="batch")
    else:
        run = jax.jit(train_step)
    for _ in range(steps):
        state, metrics = run(state, batch)
    if pmap:
        state, metrics = jax.tree.map(lambda x: x[0], (state, metrics))
    return state, metrics


@pytest.mark.parametrize("normalizer", losses.NORMALIZERS)
def test_step_jit_pmap_and_accumulation_optimise_one_loss(normalizer):
    bundle, batch = _bundle(loss_normalizer=normalizer), _batch()
    reference, metrics = _run(bundle, batch, accum=1, pmap=False)
    for accum, pmap in ((1, True), (2, False), (2, True)):
        state, other = _run(bundle, batch, accum=accum, pmap=pmap)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
            state.params,
            reference.params,
        )
        for name in ("loss", "decode_loss", "aux_loss", "pixel_accuracy"):
            np.testing.assert_allclose(other[name], metrics[name], rtol=2e-5, err_msg=name)
    assert float(metrics["finite"]) == 1.0
    # With 'kept' the split matters here: the mean of the 4 devices' own losses is another
    # number (their kept pixels differ); with 'all' every shard has as many pixels, so it is not.
    params = bundle.module.init(jax.random.key(0), batch["image"][:1], train=True)["params"]
    outputs = bundle.module.apply({"params": params}, batch["image"], train=True)
    whole = float(bundle.loss_fn(outputs, batch)[0])
    shards = [
        float(
            bundle.loss_fn(
                # tree.map calls the lambdas at once: no late binding of `i`.
                jax.tree.map(lambda x: x[i : i + 2], outputs),  # noqa: B023
                jax.tree.map(lambda x: x[i : i + 2], batch),  # noqa: B023
            )[0]
        )
        for i in range(0, 8, 2)
    ]
    if normalizer == "kept":
        assert abs(np.mean(shards) - whole) > 1e-3 * whole
    else:
        np.testing.assert_allclose(np.mean(shards), whole, rtol=1e-5)


def test_step_flags_non_finite_loss_gradients_and_parameters():
    bundle, batch = _bundle(), _batch()
    _, metrics = _run(
        bundle,
        {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)},
        accum=1,
        pmap=False,
        steps=1,
    )
    assert float(metrics["finite"]) == 0.0  # NaN loss

    # Finite loss, NaN gradient: d sqrt(x)/dx at 0.
    def sqrt_ratios(outputs, batch):
        return {"decode_loss": (jnp.sqrt(jnp.sum(outputs["logits"] * 0.0)), jnp.float32(1.0))}

    sqrt_bundle = dataclasses.replace(bundle, loss_ratios_fn=sqrt_ratios, loss_selection_fn=None)
    _, metrics = _run(sqrt_bundle, batch, accum=1, pmap=False, steps=1)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["finite"]) == 0.0


def test_out_of_range_labels_reach_the_step_metrics_and_warn_once(caplog):
    bundle, batch = _bundle(), _batch()
    batch = {**batch, "label": batch["label"].at[0, 0, :3].set(9)}
    _, metrics = _run(bundle, batch, accum=1, pmap=False, steps=1)
    np.testing.assert_allclose(metrics["out_of_range_labels"], 3 / batch["label"].size)
    values = {"out_of_range_labels": float(metrics["out_of_range_labels"])}
    with caplog.at_level("WARNING"):
        assert step_lib.warn_out_of_range_labels(values, 1, False)
        assert step_lib.warn_out_of_range_labels(values, 2, True)
    assert len(caplog.records) == 1 and "step 1" in caplog.text
    assert not step_lib.warn_out_of_range_labels({"out_of_range_labels": 0.0}, 1, False)


def test_updated_parameters_overflowing_are_flagged():
    """Finite loss and gradients, but weight decay pushes an (unused) 3e38 parameter past the
    float32 range: θ − lr·wd·θ = −2θ."""
    bundle, batch = _bundle(), _batch()
    opt = base_config().optimizer
    opt.update(dict(lr=3.0, min_lr=3.0, weight_decay=1.0, momentum=0.0))
    optimizer = step_lib.make_optimizer(opt, 10)
    params = bundle.module.init(jax.random.key(0), batch["image"][:1], train=True)["params"]
    params = {**params, "unused": jnp.full((3,), 3e38, jnp.float32)}
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={},
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    train_step = step_lib.make_train_step(bundle, optimizer, optax.constant_schedule(3.0))
    new_state, metrics = jax.jit(train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert not np.isfinite(new_state.params["unused"]).all()
    assert float(metrics["finite"]) == 0.0


def test_run_stops_at_the_first_non_finite_step_and_saves_nothing_non_finite(tmp_path):
    """lr 1e38 sends the parameters to ±1e38 or past float32's range within two steps: the run
    stops naming the step, and every checkpoint it saved (one per step) is finite."""
    config = tiny_config(
        **{"optimizer.lr": 1e38, "optimizer.min_lr": 1e38, "checkpoint.every_steps": 1}
    )
    with pytest.raises(FloatingPointError, match=r"non-finite training step at step [12] "):
        train_and_evaluate(config, str(tmp_path))
    for step in os.listdir(tmp_path / "checkpoints"):
        variables = load_variables(str(tmp_path / "checkpoints" / step))
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
