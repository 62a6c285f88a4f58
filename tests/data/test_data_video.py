"""Video preparation (the tfds builders) in the Kinetics and UCF101 layouts on a few tiny videos
encoded here with FFmpeg (PyAV)."""

import csv
import os

import numpy as np
import pytest
from data_fixtures import write_video

from dnl_jax.data import load_split, transforms
from dnl_jax.data.prepare import prepare

FRAMES, H, W = 6, 16, 24


def test_class_folders(tmp_path):
    raw = tmp_path / "raw"
    write_video(raw / "train" / "juggling" / "a.mp4", (200, 40, 40))
    write_video(raw / "train" / "abseiling" / "b.mp4", (40, 200, 40))
    write_video(raw / "train" / "abseiling" / "c.mp4", (40, 40, 200))
    write_video(raw / "val" / "juggling" / "d.mp4", (200, 200, 40))
    prepare(
        "kinetics",
        str(raw),
        str(tmp_path / "out"),
        short_side=8,
        max_frames=4,
        num_workers=2,
        log=lambda _: 0,
    )
    train = load_split("kinetics", "train", str(tmp_path / "out"), with_names=True)
    assert train.classes == ["abseiling", "juggling"] and len(train) == 3
    assert (train.metadata["short_side"], train.metadata["max_frames"]) == (8, 4)
    assert os.path.isfile(
        tmp_path / "out" / "kinetics" / "1.0.0" / "kinetics-train.array_record-00000-of-00001"
    )  # tfds's layout
    example = train[0]
    assert example["name"] == os.path.join("train", "abseiling", "b.mp4")
    assert example["label"] == 0
    assert example["video"].shape == (4, 8, 12, 3) and example["video"].dtype == np.uint8
    # Flat green frames survive mpeg4 + JPEG within a few grey levels.
    np.testing.assert_allclose(
        np.asarray(example["video"]).reshape(-1, 3).mean(0), (40, 200, 40), atol=12
    )
    val = load_split("kinetics", "val", str(tmp_path / "out"))
    assert len(val) == 1 and val[0]["label"] == 1
    clip = transforms.video_train_augment(
        val[0], np.random.default_rng(0), clip_len=2, stride=2, crop_size=6, short_side_range=(8, 8)
    )
    assert clip["video"].shape == (2, 6, 6, 3)
    assert_clip_decodes_only_its_frames(train[1])


def assert_clip_decodes_only_its_frames(example):
    """A source's video decodes lazily: a clip of 2 frames (stride 2) decodes 2 of the 4 stored
    JPEGs, and gives the pixels the full decode gives."""
    frames = example["video"]
    full = np.asarray(frames)
    decoded = []
    decode = frames._decode
    frames._decode = lambda data: decoded.append(data) or decode(data)
    rng = np.random.default_rng(3)
    indices = transforms.random_clip_indices(
        len(frames), np.random.default_rng(3), clip_len=2, stride=2
    )
    clip = transforms.video_train_augment(
        example, rng, clip_len=2, stride=2, crop_size=8, short_side_range=(8, 8)
    )
    assert len(decoded) == 2 and clip["video"].shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(frames[indices], full[indices])
    np.testing.assert_array_equal(frames[1:3], full[1:3])
    np.testing.assert_array_equal(frames[-1], full[-1])
    with pytest.raises(TypeError, match="1-D int array"):
        frames[:, 0]


def test_kinetics_csv_and_bad_videos(tmp_path):
    raw = tmp_path / "raw"
    write_video(raw / "train" / "vid1_000010_000020.mp4", (10, 10, 10))
    write_video(raw / "val" / "dance" / "vid2_000000_000010.mp4", (90, 90, 90))
    for split, rows in {
        "train": [("dance", "vid1", 10, 20)],
        "val": [("dance", "vid2", 0, 10)],
    }.items():
        with open(raw / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows([(*row, split) for row in rows])
    prepare("kinetics", str(raw), str(tmp_path / "out"), short_side=8, log=lambda _: 0)
    assert load_split("kinetics", "val", str(tmp_path / "out"))[0]["video"].shape[0] == FRAMES

    with open(raw / "train.csv", "a", newline="") as f:
        csv.writer(f).writerow(["dance", "gone", 0, 10, "train"])
    with pytest.raises(ValueError, match=r"train/gone_000000_000010\.mp4"):
        prepare("kinetics", str(raw), str(tmp_path / "out2"))
    broken = tmp_path / "broken"
    write_video(broken / "train" / "x" / "ok.mp4", (0, 0, 0))
    write_video(broken / "val" / "x" / "ok.mp4", (0, 0, 0))
    (broken / "train" / "x" / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="bad.mp4: cannot decode video"):
        prepare("kinetics", str(broken), str(tmp_path / "out3"))
    assert not os.path.exists(tmp_path / "out3" / "kinetics")
    write_video(broken / "val" / "unseen" / "v.mp4", (0, 0, 0))
    with pytest.raises(ValueError, match="classes \\['unseen'\\] absent from 'train'"):
        prepare("kinetics", str(broken), str(tmp_path / "out3"))


def test_ucf101_official_lists(tmp_path):
    raw = tmp_path / "raw"
    lists = raw / "ucfTrainTestlist"
    os.makedirs(lists)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    videos = {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi": (200, 0, 0),
        "Archery/v_Archery_g08_c01.avi": (0, 200, 0),
        "Archery/v_Archery_g01_c01.avi": (0, 0, 200),
    }
    for relative, colour in videos.items():
        write_video(raw / "UCF-101" / relative, colour)
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c01.avi 2\n"
    )
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    prepare("ucf101", str(raw), str(tmp_path / "out"), short_side=8, log=lambda _: 0)
    train = load_split("ucf101", "train", str(tmp_path / "out"))
    test = load_split("ucf101", "test", str(tmp_path / "out"), with_names=True)
    assert train.classes == ["ApplyEyeMakeup", "Archery"]
    assert [int(train[i]["label"]) for i in range(2)] == [0, 1]
    assert test[0]["label"] == 1 and test[0]["name"].endswith("v_Archery_g01_c01.avi")
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g02_c01.avi\n")
    with pytest.raises(ValueError, match="UCF-101/Archery/v_Archery_g02_c01.avi"):
        prepare("ucf101", str(raw), str(tmp_path / "out2"))
