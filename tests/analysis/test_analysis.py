"""dnl_jax.analysis and the `python -m dnl_jax.cli.analyze` command."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_testing import CACHE_ENV, enable_compilation_cache, tiny_config

from dnl_jax import analysis
from dnl_jax.analysis import capture as capture_lib
from dnl_jax.core import attention, blocks
from dnl_jax.data.regions import RegionScenes
from dnl_jax.train.trainer import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_block(module, shape, seed=0, spread=0.5):
    """(variables with every parameter redrawn N(0, spread²), input) for `module`."""
    x = jax.random.normal(jax.random.key(seed), shape)
    variables = module.init(jax.random.key(seed + 1), x)
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(seed + 2), len(leaves))
    params = jax.tree.unflatten(
        tree,
        [spread * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=False)],
    )
    return {**variables, "params": params}, x


def _softmax(x):
    return np.asarray(jax.nn.softmax(jnp.asarray(x, jnp.float32), axis=-1))


@pytest.mark.parametrize(
    "shape, kwargs",
    [((2, 6, 5, 16), {}), ((1, 2, 4, 4, 16), dict(sub_sample=True, pool_window=(1, 2, 2)))],
)
def test_nonlocal_decomposes_into_pairwise_plus_unary(shape, kwargs):
    module = blocks.NonLocal(**kwargs)
    variables, x = _random_block(module, shape)
    _, (capture,) = analysis.BlockCapturer(module)(variables, x)
    queries = np.arange(int(np.prod(capture.grid)))
    logits = analysis.attention_logits(capture, queries)
    rows = analysis.attention_rows(capture, queries)
    # The block's own attention, from its parameters by hand: softmax(θᵀφ / √C').
    params = variables["params"]

    def project(name):
        return (
            np.einsum(
                "...c,cd->...d",
                np.asarray(x),
                params[name]["conv"]["kernel"].reshape(shape[-1], -1),
            )
            + params[name]["conv"]["bias"]
        )

    theta = project("theta").reshape(shape[0], -1, shape[-1] // 2)
    phi = capture_lib._sub_sample(project("phi"), capture_window(kwargs))
    phi = phi.reshape(shape[0], -1, shape[-1] // 2)
    expected = _softmax(np.einsum("bnc,bmc->bnm", theta, phi) / np.sqrt(shape[-1] // 2))
    assert capture.kind == "nl" and rows["full"].shape == expected.shape
    np.testing.assert_allclose(rows["full"], expected, atol=2e-6)
    recomposed = _softmax(logits["pairwise"] + logits["unary"])
    np.testing.assert_allclose(recomposed, rows["full"], atol=2e-6)
    # Not trivially so: the terms differ from the full map and from each other.
    assert np.abs(rows["pairwise"] - rows["full"]).max() > 1e-3
    assert np.abs(rows["unary"] - rows["full"]).max() > 1e-3


def capture_window(kwargs):
    return kwargs.get("pool_window", ()) if kwargs.get("sub_sample") else ()


def test_dnl_rows_reproduce_the_blocks_attention_output():
    """The analysis' explicit terms of a DNL block, applied to its values g, give what the block's
    own `dnl_attention` gives: the captured maps are the weights the block uses."""
    module = blocks.DisentangledNonLocal(reduction=2, temperature=0.05)
    variables, x = _random_block(module, (2, 4, 5, 8))
    _, (capture,) = analysis.BlockCapturer(module)(variables, x)
    _, state = module.apply(
        variables, x, capture_intermediates=lambda m, _: m.name == "g", mutable=["intermediates"]
    )
    g = np.asarray(state["intermediates"]["g"]["__call__"][0]).reshape(2, 20, 4)
    rows = analysis.attention_rows(capture, np.arange(20))
    assert capture.kind == "dnl" and rows["pairwise"].shape == (2, 20, 20)
    np.testing.assert_allclose(rows["pairwise"].sum(-1), 1.0, atol=1e-5)
    assert float(rows["pairwise"].max()) > 0.5  # peaked: the check below is not about uniform maps
    expected = attention.dnl_attention(
        capture.q, capture.k, g, capture.unary_logits, temperature=0.05, implementation="xla"
    )
    np.testing.assert_allclose(2 * rows["full"] @ g, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows["pairwise"] @ g + rows["unary"] @ g, expected, atol=1e-5)


def test_decomposition_is_the_same_in_chunks():
    module = blocks.NonLocal()
    variables, x = _random_block(module, (2, 5, 5, 8))
    _, (capture,) = analysis.BlockCapturer(module)(variables, x)
    whole = analysis.attention_rows(capture, np.arange(25))
    parts = [analysis.attention_rows(capture, np.arange(s, min(s + 7, 25))) for s in (0, 7, 14, 21)]
    for term in analysis.TERMS:
        np.testing.assert_allclose(
            np.concatenate([p[term] for p in parts], 1), whole[term], atol=1e-7
        )


def test_query_independence_unary_zero_pairwise_positive():
    labels = np.random.default_rng(0).integers(0, 3, (2, 12, 12))
    values = {}
    for name, kwargs in (("unary", dict(pairwise=False)), ("pairwise", dict(unary=False))):
        module = blocks.DisentangledNonLocal(temperature=0.5, **kwargs)
        variables, x = _random_block(module, (2, 6, 6, 16))
        _, (capture,) = analysis.BlockCapturer(module)(variables, x)
        stats = analysis.BlockStatistics(capture.path, capture.kind)
        analysis.accumulate(stats, capture, labels, chunk=10)
        values[name] = stats.summary()["means"]
    assert abs(values["unary"]["query_independence/unary"]) < 1e-6
    assert abs(values["unary"]["query_independence/full"]) < 1e-6
    assert values["pairwise"]["query_independence/pairwise"] > 0.05
    assert "pairwise~within" not in values["unary"] and "unary~boundary" not in values["pairwise"]


def test_query_independence_by_hand():
    assert analysis.query_independence(np.tile([0.2, 0.3, 0.5], (4, 1))) == pytest.approx(
        0, abs=1e-12
    )
    assert analysis.query_independence(np.eye(3)) == pytest.approx(1.0)  # orthogonal maps
    # Two maps at 60°: cos = 0.5, one pair.
    maps = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    assert analysis.query_independence(maps) == pytest.approx(0.5)


def test_map_equal_to_the_ground_truth_has_consistency_one():
    grid_labels = np.array([[[0, 0, 1, 1], [0, 2, 2, 1], [0, 2, 2, 1], [255, 0, 0, 1]]])
    flat = grid_labels.reshape(1, -1)
    within = (flat[:, None, :] == flat[:, :, None]).astype(np.float32)
    got = analysis.consistency(within / within.sum(-1, keepdims=True), flat, flat, "within")
    valid = flat != 255
    np.testing.assert_allclose(got[valid], 1.0, atol=1e-9)
    assert np.isnan(got[~valid]).all()
    boundary = analysis.boundary_map(grid_labels).reshape(1, 1, -1).astype(np.float32)
    maps = np.broadcast_to(boundary, (1, 16, 16))
    got = analysis.consistency(maps, flat, flat, "boundary", key_grid=(4, 4))
    np.testing.assert_allclose(got[valid], 1.0, atol=1e-9)
    # The opposite map gives -1.
    got = analysis.consistency(1 - maps, flat, flat, "boundary", key_grid=(4, 4))
    np.testing.assert_allclose(got[valid], -1.0, atol=1e-9)


def test_boundary_map_by_hand():
    labels = np.array([[[0, 0, 1], [0, 0, 1], [2, 255, 1]]])
    expected = np.array(
        [[[0, 1, 1], [1, 1, 1], [1, 0, 0]]]
    )  # the 1 at the corner touches only 1 and 255
    np.testing.assert_array_equal(analysis.boundary_map(labels), expected)


def test_labels_to_grid_majority_and_ignore():
    labels = np.array([[[1, 1, 2, 2], [1, 3, 2, 255], [255, 255, 0, 0], [255, 255, 0, 4]]])
    np.testing.assert_array_equal(analysis.labels_to_grid(labels, (2, 2)), [[[1, 2], [255, 0]]])
    with pytest.raises(ValueError, match="2-D grid"):
        analysis.labels_to_grid(labels, (2, 2, 2))


def test_capture_finds_blocks_in_a_model_and_none_in_fcn():
    from dnl_jax.tasks import get_model

    x = jnp.zeros((1, 32, 32, 3))
    found = {}
    for name in ("dnl_tiny", "gc_tiny", "fcn_tiny"):
        module = get_model(name, 5).module
        _, captures = analysis.BlockCapturer(module)(module.init(jax.random.key(0), x), x)
        found[name] = [(c.path, c.kind, c.grid, c.key_grid) for c in captures]
    assert found == {
        "dnl_tiny": [("decode_head/dnl_block", "dnl", (4, 4), (4, 4))],
        "gc_tiny": [("decode_head/gc_block", "gc", (4, 4), (4, 4))],
        "fcn_tiny": [],
    }


def test_regions_scenes_same_colour_same_class_and_marker_inside():
    source = RegionScenes(8, image_size=64, num_classes=7, seed=3)
    for index in range(8):
        example = source[index]
        again = source[index]
        np.testing.assert_array_equal(example["image"], again["image"])
        classes = set(np.unique(example["label"])) - {0}
        assert 1 <= len(classes) <= 2 and max(classes) <= 6
        # Exactly one black or white marker square per colour present (as pixels of its class).
        grey = example["image"] * 0.25 + 0.5
        for cls in classes:
            bright = (np.abs(grey - (cls - 1) % 2).max(-1) < 0.35) & (example["label"] == cls)
            assert bright.sum() >= 4, (index, cls)


def test_analyze_command_end_to_end(tmp_path):
    enable_compilation_cache()
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(**{"model.name": "nl_tiny", "total_steps": 2}), workdir)
    command = [
        sys.executable,
        "-m",
        "dnl_jax.cli.analyze",
        "--config",
        "experiments/configs/synthetic_nl_tiny.py",
        "--config.data.synthetic.image_size=32",
        "--config.data.num_classes=5",
        "--config.data.synthetic.num_val=16",
        "--checkpoint",
        os.path.join(workdir, "checkpoints"),
        "--num_images",
        "4",
        "--batch_size",
        "2",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, **CACHE_ENV},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| decode_head/nl_block | nl |" in done.stdout
    # The beacon scenes know their salient keys: the saliency columns are printed too.
    assert "| un~salient | pw~salient | un@salient | pw@salient | salient area |" in done.stdout
    # ... and the mass statistics of the confirmatory claims, each beside its chance level.
    assert "| un@boundary | boundary area | pw@within | within area |" in done.stdout
    with open(tmp_path / "run" / "analysis" / "analysis.json") as f:
        record = json.load(f)
    (block,) = record["blocks"]
    assert block["counts"]["query_independence/full"] == 4
    assert block["counts"]["unary~salient"] == 4  # one unary map per image
    assert all(np.isfinite(v) for v in block["means"].values())
    assert 0 <= record["miou"] <= 1
    assert os.path.getsize(tmp_path / "run" / "analysis" / "analysis.png") > 10_000


def test_config_scenes_key_is_checked_and_picks_the_source():
    from dnl_jax import tasks
    from dnl_jax.train.config import base_config, validate_config

    config = base_config()
    config.data.synthetic.scenes = "rings"
    with pytest.raises(ValueError, match="config.data.synthetic.scenes='rings'; choose one of"):
        validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    config.data.synthetic.scenes = "regions"
    validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    train, val = tasks.for_dataset(config.data.name).sources(config.data)
    assert isinstance(train, RegionScenes) and val.split == "val"
