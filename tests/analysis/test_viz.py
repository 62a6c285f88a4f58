"""Tests of dnl_jax.analysis.viz: the attention maps it captures (rows summing to 1 over keys)
and the figure's PNG."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dnl_jax.analysis import viz
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.models.registry import init_variables
from dnl_jax.tasks import get_model


@pytest.fixture(scope="module")
def val_source():
    return SyntheticSegmentation(3, image_size=32, num_classes=5, split="val")


def tiny_variables(name, source):
    bundle = get_model(name, 5)
    return bundle.module, init_variables(bundle.module, jax.random.key(0), source[0]["image"][None])


def test_capture_attention_on_the_tiny_segmentor(val_source):
    module, variables = tiny_variables("dnl_tiny", val_source)
    images = jnp.stack([val_source[i]["image"] for i in range(2)])
    maps = viz.capture_attention(module, variables, images)
    assert maps["grid"] == (4, 4)  # 32 / output stride 8
    chex.assert_shape(maps["pairwise"], (2, 16, 16))
    chex.assert_shape(maps["logits"], (2, 32, 32, 5))
    np.testing.assert_allclose(maps["pairwise"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps["unary"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name, columns", [("dnl_tiny", 7), ("dnl_unary_tiny", 4)])
def test_figure_is_a_png_of_the_expected_size(tmp_path, val_source, name, columns):
    module, variables = tiny_variables(name, val_source)
    path = viz.save_attention_figure(str(tmp_path), module, variables, val_source, num_classes=5)
    assert path == os.path.join(str(tmp_path), "attention.png") and os.path.getsize(path) > 0
    with Image.open(path) as png:
        assert png.format == "PNG"
        # 3 rows; image | truth | prediction | 3 pairwise queries (if any) | unary; 200 px each.
        assert png.size == (columns * 200, 3 * 200)


def test_no_figure_without_a_dnl_block(tmp_path, val_source):
    module, variables = tiny_variables("fcn_tiny", val_source)
    assert (
        viz.save_attention_figure(str(tmp_path), module, variables, val_source, num_classes=5)
        is None
    )
    assert os.listdir(tmp_path) == []


def test_query_pixels_lie_on_distinct_classes():
    label = np.zeros((8, 8), np.int32)
    label[:3, :3], label[5:, 5:], label[0, 7] = 2, 3, 255
    points = viz.query_pixels(label, 3)
    assert [int(label[p]) for p in points] == [2, 3, 0]
    with pytest.raises(ValueError, match="num_images"):
        viz.save_attention_figure("/nonexistent", None, {}, [], num_classes=2, num_images=0)


def test_figure_has_colour_bars_a_legend_and_the_beacon_outlined(val_source):
    module, variables = tiny_variables("dnl_tiny", val_source)
    images = jnp.stack([val_source[i]["image"] for i in range(2)])
    labels = np.stack([val_source[i]["label"] for i in range(2)])
    salient = np.stack([val_source.salient_map(i) for i in range(2)])
    maps = viz.capture_attention(module, variables, images)
    fig = viz.attention_figure(np.asarray(images), labels, maps, num_classes=5, salient=salient)
    panels, bars = fig.axes[: 2 * 7], fig.axes[2 * 7 :]
    # Per row: the class bar of the label panels and one weight bar per attention map (3 + 1).
    assert len(bars) == 2 * (1 + 4)
    assert [bar.get_ylabel() for bar in bars].count("class") == 2
    (legend,) = fig.legends
    texts = [text.get_text() for text in legend.get_texts()]
    assert "query pixel" in texts and "beacon (salient keys)" in texts
    # The beacon's bounding box, outlined in every panel of its row.
    rows, cols = np.nonzero(salient[0])
    for axis in panels[:7]:
        (outline,) = [p for p in axis.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 1.0)]
        assert outline.get_xy() == (cols.min() - 0.5, rows.min() - 0.5)
        assert outline.get_width() == cols.max() - cols.min() + 1
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_decomposition_figure_draws_every_term_and_the_salient_keys():
    """The analysis figure (shares the overlay with the attention figure): one row, 2 queries."""
    rng = np.random.default_rng(0)
    maps = {term: rng.dirichlet(np.ones(16), size=2) for term in ("full", "pairwise", "unary")}
    row = {
        "title": "decode_head (dnl)",
        "image": rng.random((32, 32, 3)),
        "label": rng.integers(0, 5, (32, 32)),
        "grid": (4, 4),
        "points": [(3, 3), (20, 20)],
        "maps": maps,
        "salient": np.eye(4, dtype=bool),
    }
    fig = viz.decomposition_figure([row], num_classes=5)
    assert len(fig.axes) == 3 + 2 * 2 + 1  # image, truth, full ×2, pairwise ×2, unary, salient
    assert all(axis.images for axis in fig.axes)  # no panel left blank
    import matplotlib.pyplot as plt

    plt.close(fig)
