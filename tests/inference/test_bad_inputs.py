"""Every bad input of predict is one line on stderr (exit status 2), and outputs are whole."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import write_scene_pngs
from PIL import Image

from dnl_jax.cli import predict as predict_cli
from dnl_jax.inference import files
from dnl_jax.inference.record import RECORD_FILE


def _fails(args, capsys, expected: str) -> str:
    assert predict_cli.main([*args, "--no_progress_bar"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("predict: "), captured.err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def checkpoint(trained_run):
    return ["--checkpoint", f"{trained_run[0]}/checkpoints"]


def test_empty_and_unreadable_files(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    out = ["--output_dir", str(tmp_path / "out")]
    _fails([str(empty), *checkpoint, *out], capsys, f"{empty} is empty (0 bytes)")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    _fails([str(text), *checkpoint, *out], capsys, f"{text} is not a readable image")


def test_image_smaller_than_the_output_stride(checkpoint, tmp_path, capsys):
    Image.new("RGB", (6, 30)).save(tmp_path / "thin.png")
    args = [str(tmp_path / "thin.png"), *checkpoint, "--output_dir", str(tmp_path / "out")]
    _fails(args, capsys, "the image is 6x30 pixels (after the record's resize), smaller than")


def test_folder_without_images_and_missing_input(checkpoint, tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    out = ["--output_dir", str(tmp_path / "out")]
    _fails([str(tmp_path / "docs"), *checkpoint, *out], capsys, "has no images")
    _fails([str(tmp_path / "nope*.png"), *checkpoint, *out], capsys, "does not exist")


def test_video_for_an_image_checkpoint(checkpoint, tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    args = [str(tmp_path / "clip.mp4"), *checkpoint, "--output_dir", str(tmp_path / "out")]
    _fails(args, capsys, "is a video but the checkpoint is a segmentation model")


def test_checkpoints_without_record_or_of_another_model(trained_run, tmp_path, capsys):
    workdir, config = trained_run
    image = write_scene_pngs(config, tmp_path / "in", 1)
    out = ["--output_dir", str(tmp_path / "out")]
    bare = tmp_path / "bare"
    shutil.copytree(f"{workdir}/checkpoints/300", bare / "300")
    _fails([*image, "--checkpoint", str(bare / "300"), *out], capsys, "pass --config CONFIG.py")
    _fails([*image, "--checkpoint", str(tmp_path / "nothing"), *out], capsys, "does not exist")
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    with open(other / RECORD_FILE) as file:
        record = json.load(file)
    record["num_classes"] = 7
    with open(other / RECORD_FILE, "w") as file:
        json.dump(record, file)
    _fails([*image, "--checkpoint", str(other / "checkpoints"), *out], capsys, "does not fit")


def test_slide_without_windows(checkpoint, trained_run, tmp_path, capsys):
    image = write_scene_pngs(trained_run[1], tmp_path / "in", 1)
    args = [*image, *checkpoint, "--output_dir", str(tmp_path / "out"), "--mode", "slide"]
    _fails(args, capsys, "--mode slide needs window sizes")


def test_a_failure_leaves_earlier_outputs_whole_and_nothing_half(
    checkpoint, trained_run, tmp_path, capsys
):
    good = write_scene_pngs(trained_run[1], tmp_path / "in", 1)
    bad = tmp_path / "in" / "z_bad.png"
    bad.write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    args = [*good, str(bad), *checkpoint, "--output_dir", str(out), "--batch_size", "1"]
    _fails(args, capsys, "is not a readable image")
    assert sorted(os.listdir(out)) == ["scene0_labels.png", "scene0_overlay.png"]
    assert np.asarray(Image.open(out / "scene0_labels.png")).shape == (32, 32)


def test_write_atomic_leaves_no_partial_file(tmp_path):
    def broken(buffer):
        buffer.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.save_atomic(str(tmp_path / "a.png"), broken)
    files.write_atomic(str(tmp_path / "b.bin"), b"whole")
    assert os.listdir(tmp_path) == ["b.bin"]


def test_grayscale_and_rgba_are_converted_with_a_note(tmp_path):
    Image.new("L", (9, 9), 7).save(tmp_path / "grey.png")
    Image.new("RGBA", (9, 9), (1, 2, 3, 4)).save(tmp_path / "alpha.png")
    notes = []
    grey = files.read_image(str(tmp_path / "grey.png"), notes)
    alpha = files.read_image(str(tmp_path / "alpha.png"), notes)
    assert grey.shape == alpha.shape == (9, 9, 3) and (alpha[0, 0] == (1, 2, 3)).all()
    assert notes == [
        "note: grey.png is grayscale; converted to RGB.",
        "note: alpha.png is RGBA (alpha dropped); converted to RGB.",
    ]
