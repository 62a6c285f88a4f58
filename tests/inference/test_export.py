"""export: a jax.export artifact with a symbolic batch whose logits equal the Flax model's to
1e-5, which `predict --exported` runs without building the model."""

import numpy as np
import pytest
from conftest import scene_rgb, val_scenes, write_scene_pngs
from PIL import Image

from dnl_jax.cli import export as export_cli
from dnl_jax.cli import predict as predict_cli
from dnl_jax.inference import Predictor
from dnl_jax.inference.export import read_artifact


@pytest.fixture(scope="module")
def artifact(trained_run, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "model.jaxexport")
    args = ["--checkpoint", f"{trained_run[0]}/checkpoints", "--output", path]
    assert export_cli.main([*args, "--input_size", "32,32"]) == 0
    return path


def test_exported_logits_equal_the_flax_model(trained_run, artifact, capsys):
    workdir, config = trained_run
    exported, record, input_size = read_artifact(artifact)
    assert input_size == (32, 32) and record.model == "dnl_tiny"
    assert "b" in str(exported.in_avals[0].shape[0])  # the batch is symbolic
    flax_predictor = Predictor.from_checkpoint(f"{workdir}/checkpoints")
    scenes = val_scenes(config)
    for batch in (1, 3):  # any batch size, one program
        images = np.stack([scenes[i]["image"] for i in range(batch)])
        expected = np.asarray(flax_predictor.logits_fn(images))
        got = np.asarray(exported.call(images))
        assert got.shape == expected.shape == (batch, 32, 32, 5)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_predict_with_the_exported_model(trained_run, artifact, tmp_path, capsys):
    workdir, config = trained_run
    paths = write_scene_pngs(config, tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [*paths, "--exported", artifact, "--output_dir", str(out), "--no_progress_bar"]
    assert predict_cli.main(args) == 0
    flax_predictor = Predictor.from_checkpoint(f"{workdir}/checkpoints")
    for index in range(2):
        expected = flax_predictor.predict(scene_rgb(val_scenes(config)[index]["image"])).labels
        got = np.asarray(Image.open(out / f"scene{index}_labels.png"))
        np.testing.assert_array_equal(got, expected)
    exported = Predictor.from_exported(artifact)
    big = np.asarray(Image.open(paths[0]).resize((48, 40)))
    assert exported.predict(big, mode="slide", stride=(8, 16)).labels.shape == (40, 48)
    with pytest.raises(
        ValueError, match="the exported model takes 32x32 inputs, this one is 48x40"
    ):
        exported.predict(big)
    with pytest.raises(ValueError, match="an exported model has no blocks to explain"):
        exported.explain(big)


def test_bad_export_inputs_are_one_line(trained_run, tmp_path, capsys):
    bogus = tmp_path / "model.jaxexport"
    bogus.write_bytes(b"not a zip")
    out = ["--output_dir", str(tmp_path / "o"), "--no_progress_bar"]
    paths = write_scene_pngs(trained_run[1], tmp_path / "in", 1)
    assert predict_cli.main([*paths, "--exported", str(bogus), *out]) == 2
    assert "is not a `python -m dnl_jax.export` artifact" in capsys.readouterr().err
    args = ["--checkpoint", f"{trained_run[0]}/checkpoints", "--output", str(tmp_path / "m")]
    assert export_cli.main(args) == 2  # the synthetic record has no fixed size
    assert capsys.readouterr().err.strip().startswith("export: the checkpoint's record has no")
