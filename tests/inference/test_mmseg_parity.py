"""A published-style DNLNet in two commands: an mmseg-layout checkpoint (mmseg's own classes,
tests/openmmlab_reference.py) converted by `interop.convert`, then `predict` on a photo, gives
the PyTorch model's label map (same image, same ImageNet normalisation) in >= 99.9 % of pixels."""

import json

import numpy as np
from openmmlab_reference import mmseg_head, mmseg_resnet_v1c
from PIL import Image
from torch_reference import EncoderDecoder, randomize, require

from dnl_jax.cli import predict as predict_cli
from dnl_jax.data import cityscapes, transforms
from dnl_jax.interop import convert

torch = require("torch")
CLASSES = 19  # the converter's record then names Cityscapes' classes, colours and label ids


def tiny_dnlnet():
    """mmseg's DNLNet parts with the registry's `dnl_tiny` widths (R18, 8/8/16/8)."""
    return randomize(
        EncoderDecoder(
            mmseg_resnet_v1c((2, 2, 2, 2), False, stem=8, base=8),
            mmseg_head(64, 16, CLASSES, context="dnl", in_index=3),
            mmseg_head(32, 8, CLASSES, num_convs=1, concat_input=False, in_index=2),
        ),
        seed=7,
        fan_in_weights=True,  # activations O(1) through the net, as a trained model's
    )


def photo(height=56, width=72, seed=0) -> np.ndarray:
    """A smooth colour image with a few shapes (not noise: labels come in regions)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([yy, xx, 1 - yy * xx], -1) * 255
    for _ in range(4):
        y, x, r = rng.integers(0, height), rng.integers(0, width), rng.integers(5, 15)
        image[
            (np.mgrid[0:height, 0:width][0] - y) ** 2 + (np.mgrid[0:height, 0:width][1] - x) ** 2
            < r * r
        ] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def test_converted_mmseg_checkpoint_predicts_the_torch_label_map(tmp_path, capsys):
    model = tiny_dnlnet()
    source = tmp_path / "dnlnet_tiny.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, source)
    assert convert.main([str(source), str(tmp_path / "converted"), "--model", "auto"]) == 0
    record = json.loads((tmp_path / "converted" / "preprocessing.json").read_text())
    assert record["dataset"] == "cityscapes" and record["architecture"]["head"] == "dnl"
    image = photo()
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    args = [str(tmp_path / "photo.png"), "--checkpoint", str(tmp_path / "converted")]
    assert predict_cli.main([*args, "--output_dir", str(out), "--no_progress_bar"]) == 0
    written = np.asarray(Image.open(out / "photo_labels.png"))
    assert set(np.unique(written)) <= set(cityscapes.TRAIN_TO_LABEL.tolist())  # label ids
    ours = cityscapes.LABEL_TO_TRAIN[written]

    normalised = transforms.normalize(image)  # mmseg's ImageNet mean / std, RGB
    with torch.no_grad():
        logits = model(torch.from_numpy(normalised).permute(2, 0, 1)[None])
    theirs = logits[0].argmax(0).numpy()
    agreement = float(np.mean(ours == theirs))
    print(f"label agreement with the PyTorch model: {100 * agreement:.3f} % of {ours.size} pixels")
    assert len(np.unique(theirs)) > 1  # a label map, not one class everywhere
    assert agreement >= 0.999
