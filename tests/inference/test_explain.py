"""--explain: maps whose rows sum to 1, the unary term on the beacon of the demo's scenes, NL's
full attention, queries (given, default, outside the image), figures and the .npz file."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from conftest import scene_rgb, val_scenes, write_scene_pngs
from train_testing import tiny_config

from dnl_jax import tasks
from dnl_jax.analysis import saliency
from dnl_jax.cli import predict as predict_cli
from dnl_jax.inference import Predictor, record_from_config, write_record
from dnl_jax.inference.explain import default_queries
from dnl_jax.inference.model import build_module


def _record(config):
    """The record the trainer writes for `config` (its task resolved as `tasks.build` does)."""
    return record_from_config(config, tasks.for_dataset(config.data.name))


BLOCK = "decode_head.dnl_block"


def test_cli_writes_maps_whose_rows_sum_to_one(trained_run, tmp_path, capsys):
    workdir, config = trained_run
    paths = write_scene_pngs(config, tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [*paths, "--checkpoint", f"{workdir}/checkpoints", "--output_dir", str(out)]
    assert predict_cli.main([*args, "--explain", "--no_progress_bar"]) == 0
    assert os.path.getsize(out / f"scene0_explain_{BLOCK}.png") > 10_000
    maps = np.load(out / "scene0_explain.npz")
    queries = maps["queries_xy"]
    assert queries.ndim == 2 and len(queries) == len(np.unique(maps["labels"]))
    assert tuple(maps[f"{BLOCK}.grid"]) == (4, 4)  # 32 pixels / output stride 8
    np.testing.assert_allclose(maps[f"{BLOCK}.unary"].sum(), 1.0, rtol=1e-5)
    for term in ("pairwise", "full"):
        assert maps[f"{BLOCK}.{term}"].shape == (len(queries), 16)
        np.testing.assert_allclose(maps[f"{BLOCK}.{term}"].sum(-1), 1.0, rtol=1e-5)
    assert "explanations" in capsys.readouterr().out


def test_unary_map_puts_more_mass_on_the_beacon_than_its_area(trained_run):
    """The demo's beacon scenes: the one salient spot every object's class depends on."""
    workdir, config = trained_run
    predictor = Predictor.from_checkpoint(f"{workdir}/checkpoints")
    scenes = val_scenes(config)
    masses, areas = [], []
    for index in range(len(scenes)):
        explanation = predictor.explain(scene_rgb(scenes[index]["image"]))
        (maps,) = explanation.blocks
        beacon = saliency.salient_to_grid(scenes.salient_map(index)[None], maps.grid)[0].ravel()
        masses.append(float(maps.unary @ beacon / maps.unary.sum()))
        areas.append(float(beacon.mean()))
    print(f"unary mass on the beacon {np.mean(masses):.4f}, area share {np.mean(areas):.4f}")
    assert np.mean(masses) > np.mean(areas)


def test_given_queries_map_to_their_cells(trained_run):
    workdir, config = trained_run
    predictor = Predictor.from_checkpoint(f"{workdir}/checkpoints")
    image = scene_rgb(val_scenes(config)[0]["image"])
    (maps,) = predictor.explain(image, queries=[(0, 0), (31, 31), (9, 17)]).blocks
    np.testing.assert_array_equal(maps.query_cells, [0, 15, 2 * 4 + 1])


def test_default_queries_lie_in_the_largest_region_of_each_class():
    labels = np.zeros((20, 20), np.int32)
    labels[2:5, 2:5] = 1  # small region of class 1
    labels[10:18, 0:12] = 1  # its largest region
    labels[0:3, 15:20] = 2
    queries = default_queries(labels)
    assert len(queries) == 3
    x, y = queries[1]
    assert 10 <= y < 18 and 0 <= x < 12
    assert [labels[y, x] for x, y in queries] == [0, 1, 2]


def test_query_outside_the_image_is_one_line(trained_run, tmp_path, capsys):
    workdir, config = trained_run
    paths = write_scene_pngs(config, tmp_path / "in", 1)
    args = [*paths, "--checkpoint", f"{workdir}/checkpoints", "--output_dir", str(tmp_path / "o")]
    assert predict_cli.main([*args, "--explain", "--query", "40,3", "--no_progress_bar"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "predict: --query 40,3 is outside the 32x32 image; give x in [0, 32) and y in [0, 32) "
        "(pixels, origin top left)."
    )


def test_nl_block_full_attention(tmp_path):
    """A plain NL block: implicit unary map, pairwise maps and the full attention, rows of each
    summing to 1, and a figure with the full attention's second row."""
    record = _record(tiny_config(**{"model.name": "nl_tiny"}))
    module = build_module(record)
    images = np.zeros((1, 32, 32, 3), np.float32)
    variables = jax.jit(lambda: module.init(jax.random.key(0), images, train=True))()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "nl" / "state", jax.tree.map(np.asarray, variables))
    checkpointer.wait_until_finished()
    write_record(str(tmp_path / "nl"), record)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    predictor = Predictor.from_checkpoint(str(tmp_path / "nl"))
    (maps,) = predictor.explain(image, queries=[(3, 3), (20, 28)]).blocks
    assert maps.kind == "nl"
    for rows in (maps.pairwise, maps.full, maps.unary[None]):
        np.testing.assert_allclose(rows.sum(-1), 1.0, rtol=1e-5)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "noise.png")
    args = [str(tmp_path / "noise.png"), "--checkpoint", str(tmp_path / "nl")]
    out = tmp_path / "out"
    assert (
        predict_cli.main([*args, "--output_dir", str(out), "--explain", "--no_progress_bar"]) == 0
    )
    with Image.open(out / "noise_explain_decode_head.nl_block.png") as figure:
        width, height = figure.size
    assert height > width / 4  # two rows of panels (pairwise, full attention)


def test_query_flags_repeat_and_take_several_points():
    args = predict_cli.parser().parse_args(
        ["a.png", "--output_dir", "o", "--query", "1,2", "--query", "3,4", "5,6"]
    )
    assert args.query == [(1, 2), (3, 4), (5, 6)]
