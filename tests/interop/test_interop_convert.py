"""The convert command: mmseg checkpoint → orbax `OUT_DIR/state` that the trainer can load."""

import json

import jax
import numpy as np
import pytest
from openmmlab_reference import mmseg_head, mmseg_resnet_v1c
from torch_reference import EncoderDecoder, randomize, require
from train_testing import restore

from dnl_jax import interop
from dnl_jax.interop import convert

torch = require("torch")


def tiny_dnlnet(classes=3):
    """mmseg's DNLNet parts with the registry's `dnl_tiny` widths (R18, 8/8/16/8)."""
    return randomize(
        EncoderDecoder(
            mmseg_resnet_v1c((2, 2, 2, 2), False, stem=8, base=8),
            mmseg_head(64, 16, classes, context="dnl", in_index=3),
            mmseg_head(32, 8, classes, num_convs=1, concat_input=False, in_index=2),
        ),
        seed=7,
    )


def test_convert_mmseg_checkpoint_for_a_registry_model(tmp_path, capsys):
    model = tiny_dnlnet()
    source = tmp_path / "dnl_tiny.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, source)
    assert convert.main([str(source), str(tmp_path / "out"), "--model", "dnl_tiny"]) == 0
    assert "missing 0, unexpected 0, mis-shaped 0" in capsys.readouterr().out
    restored = restore(tmp_path / "out" / "state")
    expected = interop.mmseg_to_flax(model.state_dict())
    jax.tree.map(np.testing.assert_array_equal, restored, expected)
    summary = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert summary["num_classes"] == 3 and summary["loaded"] == len(jax.tree.leaves(expected))
    # A second run must not overwrite the first.
    assert convert.main([str(source), str(tmp_path / "out"), "--model", "dnl_tiny"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_wrong_model_fails_with_report_and_partial_backbone_load(tmp_path, capsys):
    source = tmp_path / "nl.pth"
    torch.save(tiny_dnlnet().state_dict(), source)
    assert convert.main([str(source), str(tmp_path / "a"), "--model", "dnl_r18-d8"]) == 2
    error = capsys.readouterr().err
    assert (
        "mis-shaped: backbone.stem.0.weight: checkpoint (4, 3, 3, 3), model expects (32, 3, 3, 3)"
        in error
    )

    backbone = randomize(mmseg_resnet_v1c((2, 2, 2, 2), False, stem=8, base=8), seed=8)
    pretrained = tmp_path / "resnet18_v1c.pth"
    torch.save({**backbone.state_dict(), "fc.weight": torch.zeros(5, 64)}, pretrained)
    args = [str(pretrained), str(tmp_path / "b"), "--model", "dnl_tiny", "--num-classes", "4"]
    assert convert.main(args) == 2
    error = capsys.readouterr().err
    assert "missing:    decode_head.conv_seg.weight" in error and "--partial" in error
    assert convert.main(args + ["--partial"]) == 0
    restored = restore(tmp_path / "b" / "state")
    assert restored["params"]["decode_head"]["conv_seg"]["kernel"].shape == (1, 1, 16, 4)
    np.testing.assert_array_equal(
        restored["params"]["backbone"]["stem_0"]["kernel"],
        backbone.stem[0].weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    summary = json.loads((tmp_path / "b" / "conversion.json").read_text())
    assert summary["partial"] and all(
        k.startswith(("decode_head.", "auxiliary_head.")) for k in summary["missing"]
    )


def test_unknown_model_and_missing_classes(tmp_path):
    pretrained = tmp_path / "r.pth"
    torch.save(
        randomize(mmseg_resnet_v1c((2, 2, 2, 2), False, stem=8, base=8)).state_dict(), pretrained
    )
    with pytest.raises(ValueError, match="pass --num-classes"):
        convert.convert(str(pretrained), str(tmp_path / "c"), model="dnl_tiny", partial=True)
    with pytest.raises(ValueError, match="unknown model"):
        convert.convert(str(pretrained), str(tmp_path / "c"), model="nope", num_classes=2)
