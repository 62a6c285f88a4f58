"""`convert --partial`: refuses a checkpoint of which nothing matches the model (one clear line),
and reports how many of the model's tensors it loaded and how many checkpoint tensors it left."""

import json

import jax
import numpy as np
import torch

from dnl_jax.interop import convert, segmentor


def _tiny_backbone_state_dict():
    """dnl_tiny's ResNet as an mmseg state_dict (`backbone.*` only, zeros), plus one key the
    model does not have; returns it, the model's backbone tensor count and its total count."""
    module = convert.build_module({}, "dnl_tiny", 3, 8)
    template = segmentor.segmentor_template(module)
    variables = _zeros_like_template(module, seed=0)
    full = segmentor.flax_segmentor_to_torch_state_dict(variables, as_torch=True)
    backbone = {key: value for key, value in full.items() if key.startswith("backbone.")}
    in_backbone = sum(
        len(jax.tree.leaves(collection["backbone"])) for collection in template.values()
    )
    return (
        {**backbone, "backbone.extra.weight": torch.zeros(2)},
        in_backbone,
        len(jax.tree.leaves(template)),
    )


def _zeros_like_template(module, seed):
    """Stands in for the fresh initialisation (its values do not matter here): no compile."""
    del seed
    return jax.tree.map(
        lambda leaf: np.zeros(leaf.shape, leaf.dtype), segmentor.segmentor_template(module)
    )


def test_partial_reports_loaded_of_total_and_unmatched(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(convert, "_fresh_variables", _zeros_like_template)
    state_dict, in_backbone, total = _tiny_backbone_state_dict()
    source = tmp_path / "backbone.pth"
    torch.save(state_dict, source)
    args = [
        str(source),
        str(tmp_path / "out"),
        "--model",
        "dnl_tiny",
        "--num-classes",
        "3",
        "--partial",
    ]
    assert convert.main(args) == 0
    out = capsys.readouterr().out
    assert f"loaded {in_backbone} of the model's {total} tensors" in out
    assert f"missing {total - in_backbone}, unexpected 1, mis-shaped 0" in out
    summary = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert (summary["loaded"], summary["model_tensors"]) == (in_backbone, total)


def test_partial_with_nothing_matched_fails_in_one_line(tmp_path, capsys):
    source = tmp_path / "other.pth"
    torch.save(
        {
            "backbone.stem.0.weight": torch.zeros(1, 1, 1, 1),  # mis-shaped
            "backbone.not_ours.weight": torch.zeros(3),
        },
        source,
    )  # unexpected
    out_dir = tmp_path / "out"
    args = [str(source), str(out_dir), "--model", "dnl_tiny", "--num-classes", "3", "--partial"]
    assert convert.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("error: --partial matched 0 tensors of")
    assert "2 checkpoint tensors unmatched: 1 unexpected, 1 mis-shaped" in error
    assert not out_dir.exists()  # nothing written
