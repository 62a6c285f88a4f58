"""predict with a detector runs end to end: a PNG in, the image with boxes, masks and class names
drawn, and COCO-style results JSON with boxes inside the image and masks at its size."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
from train_testing import tiny_config

from dnl_jax import tasks
from dnl_jax.cli import predict as predict_cli
from dnl_jax.data.synthetic_detection import SyntheticDetection
from dnl_jax.inference import record_from_config, write_record
from dnl_jax.inference.model import build_module
from dnl_jax.models.detection.mask_rcnn import MaskRCNN


def _record(config):
    """The record the trainer writes for `config` (its task resolved as `tasks.build` does)."""
    return record_from_config(config, tasks.for_dataset(config.data.name))


SIZE = 64


def test_detection_checkpoint_on_a_png(tmp_path, capsys):
    config = tiny_config(
        **{
            "model.name": "mask_rcnn_dnl_tiny",
            "data.name": "synthetic_detection",
            "data.num_classes": 4,
            "data.synthetic.image_size": SIZE,
        }
    )
    record = _record(config)
    assert record.task == "detection" and record.resize["canvas"] == [SIZE, SIZE]
    module = build_module(record)
    images = np.zeros((1, SIZE, SIZE, 3), np.float32)
    init = jax.jit(lambda: module.init(jax.random.key(0), images, method=MaskRCNN.build))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "det" / "state", jax.tree.map(np.asarray, init()))
    checkpointer.wait_until_finished()
    write_record(str(tmp_path / "det"), record)

    scene = SyntheticDetection(1, image_size=SIZE, num_colours=2, split="val")[0]["image"]
    rgb = np.round(np.clip(scene * 0.25 + 0.5, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(rgb).resize((96, 80)).save(tmp_path / "photo.png")  # another size
    out = tmp_path / "out"
    args = [str(tmp_path / "photo.png"), "--checkpoint", str(tmp_path / "det")]
    args += ["--output_dir", str(out), "--score_threshold", "0", "--no_progress_bar"]
    assert predict_cli.main(args) == 0
    assert "drawn detections, COCO results JSON" in capsys.readouterr().out
    drawn = np.asarray(Image.open(out / "photo_detections.png"))
    assert drawn.shape == (80, 96, 3)
    results = json.loads((out / "photo_detections.json").read_text())
    assert [c["name"] for c in results["categories"]][:2] == [
        "colour 0, dark cue",
        "colour 0, light cue",
    ]
    entries = results["annotations"]
    assert entries, "an untrained detector at threshold 0 still returns its top detections"
    for entry in entries:
        x, y, w, h = entry["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 96 + 1e-3 and y + h <= 80 + 1e-3
        assert entry["segmentation"]["size"] == [80, 96] and 1 <= entry["category_id"] <= 4
    args[args.index("--score_threshold") + 1] = "1.01"  # above every score: nothing kept
    assert predict_cli.main(args) == 0
    assert json.loads((out / "photo_detections.json").read_text())["annotations"] == []
    # --explain: the backbone's context block on the detector's canvas, rows summing to 1.
    args[args.index("--score_threshold") + 1] = "0.5"
    assert predict_cli.main([*args, "--explain", "--query", "90,70"]) == 0
    stored = np.load(out / "photo_explain.npz")
    (block,) = {key.rsplit(".", 1)[0] for key in stored if key.endswith(".pairwise")}
    np.testing.assert_allclose(stored[f"{block}.pairwise"].sum(-1), 1.0, rtol=1e-5)
    assert stored["queries_xy"].tolist() == [[60, 46]]  # (90 · 64/96, 70 · 53/80): the resize
    assert (out / f"photo_explain_{block}.png").exists()
    assert predict_cli.main([*args, "--explain", "--query", "96,0"]) == 2  # outside the image
    assert "outside the 96x80 image" in capsys.readouterr().err
