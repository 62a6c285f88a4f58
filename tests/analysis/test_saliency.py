"""dnl_jax.analysis.saliency: attention terms against the scenes' known salient keys; the cue
measure."""

import numpy as np
import pytest

from dnl_jax import analysis
from dnl_jax.analysis import saliency
from dnl_jax.data.regions import RegionScenes
from dnl_jax.data.synthetic import SyntheticSegmentation

GRID = (8, 8)


def _salient_pixels(batch, seed=0, size=64):
    """bool `[B, S, S]`: one random square of 8..20 pixels per image (never a constant map)."""
    rng = np.random.default_rng(seed)
    salient = np.zeros((batch, size, size), bool)
    for b in range(batch):
        side = int(rng.integers(8, 21))
        y, x = rng.integers(0, size - side, size=2)
        salient[b, y : y + side, x : x + side] = True
    return salient


def _unary_capture(unary_logits, grid=GRID):
    """A unary-only (GC-like) capture with the given logits `[B, M]`."""
    return analysis.BlockCapture(
        "block", "gc", grid, grid, None, None, np.asarray(unary_logits, np.float32)
    )


def _stats_of(capture, salient, labels=None):
    stats = analysis.BlockStatistics("block", capture.kind)
    saliency.accumulate_saliency(stats, capture, salient, labels)
    return stats.summary()["means"], stats.counts


def test_salient_to_grid_is_the_salient_area_of_each_cell():
    salient = np.zeros((1, 16, 16), bool)
    salient[0, 2:6, 2:6] = True  # a 4×4 square straddling four 4×4 cells of a 4×4 grid
    grid = saliency.salient_to_grid(salient, (4, 4))[0]
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = 0.25, 0.25, 0.25, 0.25
    np.testing.assert_allclose(grid, expected)  # a majority vote would have erased it
    assert saliency.salient_to_grid(salient, (16, 16))[0].sum() == 16
    with pytest.raises(ValueError, match="finer than the salient map"):
        saliency.salient_to_grid(salient, (32, 32))
    with pytest.raises(ValueError, match="needs a salient map"):
        saliency.salient_to_grid(salient[0], (4, 4))


def test_unary_map_equal_to_the_salient_map_gives_one_and_all_its_mass():
    salient = _salient_pixels(6)
    cells = saliency.salient_to_grid(salient, GRID).reshape(6, -1)
    # softmax(log s) = s / Σ s: the unary map *is* the salient map, normalised.
    means, counts = _stats_of(_unary_capture(np.log(cells + 1e-30)), salient)
    assert counts["unary~salient"] == 6
    np.testing.assert_allclose(means["unary~salient"], 1.0, atol=1e-6)
    # Its mass on salient cells: Σ_j (s_j / Σ s) s_j.
    np.testing.assert_allclose(
        means["unary@salient"], np.mean((cells**2).sum(-1) / cells.sum(-1)), atol=1e-6
    )
    # Binary salient cells: every bit of the mass lies on them.
    binary = np.zeros((2, 64, 64), bool)
    binary[0, 8:24, 16:32] = binary[1, 40:48, 0:16] = True
    cells = saliency.salient_to_grid(binary, GRID).reshape(2, -1)
    means, _ = _stats_of(_unary_capture(np.log(cells + 1e-30)), binary)
    np.testing.assert_allclose([means["unary~salient"], means["unary@salient"]], 1.0, atol=1e-6)


def test_unrelated_unary_map_gives_about_zero_and_chance_mass():
    batch = 256
    salient = _salient_pixels(batch, seed=1)
    logits = np.random.default_rng(2).normal(size=(batch, 64))
    means, _ = _stats_of(_unary_capture(logits), salient)
    # Mean of 256 independent correlations over 64 keys: s.e. about 1/√(256·63) ≈ 0.008.
    assert abs(means["unary~salient"]) < 0.04
    # A uniform map puts exactly the salient area there; a random one about that.
    uniform, _ = _stats_of(_unary_capture(np.zeros((batch, 64))), salient)
    np.testing.assert_allclose(uniform["unary@salient"], uniform["salient_area"], atol=1e-9)
    assert abs(means["unary@salient"] - means["salient_area"]) < 0.02
    assert uniform["unary~salient"] is None  # a constant map has no correlation: none counted


def test_nl_implicit_unary_and_pairwise_control():
    """NL: a key embedding that grows with saliency along the mean query gives an implicit unary
    term softmax(s·μ_θᵀφ_j) that is an increasing function of s (two values: correlation 1);
    the pairwise term of centred queries against it is the crossed control."""
    batch, channels = 4, 8
    salient = _salient_pixels(batch, seed=3)
    cells = saliency.salient_to_grid(salient, GRID).reshape(batch, -1)
    rng = np.random.default_rng(4)
    q = rng.normal(size=(batch, 64, channels)) * 0.1
    q[..., 0] += 1.0  # μ_θ points along channel 0
    k = rng.normal(size=(batch, 64, channels)) * 0.1
    k[..., 0] = 3.0 * (cells > 0)
    capture = analysis.BlockCapture(
        "block", "nl", GRID, GRID, q.astype(np.float32), k.astype(np.float32), None, 1.0, False
    )
    means, counts = _stats_of(capture, salient)
    assert means["unary~salient"] > 0.7
    assert means["unary@salient"] > 3 * means["salient_area"]
    assert counts["pairwise~salient"] == batch * 64 and counts["unary~salient"] == batch
    assert {"full~salient", "full@salient", "pairwise@salient"} <= set(means)


def test_ignored_pixels_are_left_out_as_keys_and_queries():
    salient = np.zeros((1, 64, 64), bool)
    salient[0, :8, :8] = True
    labels = np.zeros((1, 64, 64), np.int64)
    labels[0, 32:, :] = 255  # the lower half of the grid is ignored
    cells = saliency.salient_to_grid(salient, GRID).reshape(1, -1)
    logits = np.log(cells + 1e-30)
    means, _ = _stats_of(_unary_capture(logits), salient, labels)
    np.testing.assert_allclose(means["salient_area"], 1 / 32)  # 1 of the 32 valid cells
    np.testing.assert_allclose(means["unary~salient"], 1.0, atol=1e-6)


@pytest.mark.parametrize("source", [SyntheticSegmentation, RegionScenes])
def test_scenes_expose_their_salient_keys_without_changing_the_examples(source):
    scenes = source(6, image_size=64, num_classes=7, split="val", seed=3)
    for index in range(6):
        example, salient = scenes[index], scenes.salient_map(index)
        assert set(example) == {"image", "label"} and salient.dtype == bool
        if source is SyntheticSegmentation:  # the beacon: its two classes, a 16×16 square
            np.testing.assert_array_equal(salient, np.isin(example["label"], (1, 2)))
            assert salient.sum() == 16 * 16
        else:  # one 8×8 marker per colour, black or white (its bit), inside its objects
            labels = example["label"][salient]
            assert salient.sum() == 8 * 8 * len(np.unique(labels)) and (labels > 0).all()
            grey = example["image"][salient].mean(-1) * 0.25 + 0.5
            # Most of the square shows the bit (outlines and interface lines may cross it).
            assert np.mean(np.abs(grey - (labels - 1) % 2) < 0.35) > 0.75


def test_object_cue_accuracy_counts_objects_and_their_twins():
    labels = np.zeros((1, 8, 8), np.int64)
    labels[0, 0:3, 0:3] = 3  # colour 0, cue 0
    labels[0, 5:8, 5:8] = 3  # a second, separate object of the same class
    labels[0, 0:2, 5:8] = 6  # colour 1, cue 1
    labels[0, 7, 0] = 1  # the beacon: not an object
    prediction = labels.copy()
    assert saliency.object_cue_accuracy(prediction, labels, 3) == (3, 3)
    prediction[0, 5:8, 5:8] = 4  # its cue twin
    prediction[0, 0:2, 5:8] = 0  # background: votes for neither class of the pair
    assert saliency.object_cue_accuracy(prediction, labels, 3) == (1, 3)
    prediction[0, 5:7, 5:8] = 3  # 6 of 9 pixels right again
    assert saliency.object_cue_accuracy(prediction, labels, 3) == (2, 3)
    np.testing.assert_array_equal(saliency.cue_twin(np.array([1, 2, 3, 4]), 1), [2, 1, 4, 3])
    with pytest.raises(ValueError, match="must both be"):
        saliency.object_cue_accuracy(prediction[0], labels, 3)


def test_steps_to_learn_is_the_first_evaluation_over_the_threshold():
    curve = {50: 0.4, 100: 0.91, 150: 0.85, 200: 0.95}
    assert saliency.steps_to_learn(curve, 0.9) == 100
    assert saliency.steps_to_learn({"50": 0.2, "100": 0.89}, 0.9) is None


def _two_region_labels(batch=2, size=64):
    """`[B, S, S]` labels: class 0 with a rectangle of class 1 and one of class 2 (different per
    image), so the grid has boundary cells and three categories."""
    labels = np.zeros((batch, size, size), np.int64)
    for b in range(batch):
        labels[b, 8 + 8 * b : 32, 8:24] = 1
        labels[b, 40:56, 24 + 8 * b : 56] = 2
    return labels


def test_unary_mass_on_boundary_cells_and_its_chance_level():
    labels = _two_region_labels()
    grid_labels = analysis.labels_to_grid(labels, GRID)
    boundary = analysis.boundary_map(grid_labels).reshape(2, -1)
    salient = np.zeros(labels.shape, bool)
    # A unary map on exactly the boundary cells puts all its mass there.
    means, counts = _stats_of(_unary_capture(np.log(boundary + 1e-30)), salient, labels)
    np.testing.assert_allclose(means["unary@boundary"], 1.0, atol=1e-6)
    assert counts["unary@boundary"] == 2
    # A uniform map puts exactly the boundary area there: the chance level.
    uniform, _ = _stats_of(_unary_capture(np.zeros((2, 64))), salient, labels)
    np.testing.assert_allclose(uniform["boundary_area"], boundary.mean())
    np.testing.assert_allclose(uniform["unary@boundary"], uniform["boundary_area"], atol=1e-9)
    assert 0 < uniform["boundary_area"] < 1


def test_pairwise_mass_on_the_query_category_and_its_chance_level():
    labels = _two_region_labels()
    grid_labels = analysis.labels_to_grid(labels, GRID).reshape(2, -1)
    salient = np.zeros(labels.shape, bool)
    one_hot = np.eye(3, dtype=np.float32)[grid_labels]  # [B, 64, 3]

    def capture(scale):
        return analysis.BlockCapture(
            "block", "dnl", GRID, GRID, one_hot, one_hot, None, scale, False
        )

    # Queries and keys embedded by their label, sharply scaled: each query's pairwise map sits
    # on its own category.
    means, counts = _stats_of(capture(50.0), salient, labels)
    np.testing.assert_allclose(means["pairwise@within"], 1.0, atol=1e-6)
    assert counts["pairwise@within"] == 2 * 64 and "unary@boundary" not in means
    # Scale 0: uniform rows put the query's category area there, the chance level.
    flat, _ = _stats_of(capture(0.0), salient, labels)
    same = grid_labels[:, :, None] == grid_labels[:, None, :]
    np.testing.assert_allclose(flat["within_area"], same.mean())
    np.testing.assert_allclose(flat["pairwise@within"], flat["within_area"], atol=1e-9)
    # Without labels there is nothing to measure the mass on.
    unlabelled, _ = _stats_of(capture(50.0), salient)
    assert "pairwise@within" not in unlabelled and "boundary_area" not in unlabelled
