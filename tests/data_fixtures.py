"""Tiny raw datasets in their real on-disk formats, written by the tests (no downloads)."""

import io
import os
import zipfile

import av
import numpy as np
from PIL import Image

from dnl_jax.data import ade20k, cityscapes, pascal_context

H, W = 12, 20


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(rng):
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


CITYSCAPES_FILES = [
    ("train", "aachen", "aachen_000000_000019"),
    ("train", "aachen", "aachen_000001_000019"),
    ("train", "bochum", "bochum_000000_000313"),
    ("val", "frankfurt", "frankfurt_000000_000294"),
]


def write_cityscapes(raw, rng, *, skip_label=None, corrupt=None):
    """The two official zips with real member names; labels hold ids 0..33 plus one id 40."""
    os.makedirs(raw, exist_ok=True)
    labels = {}
    with (
        zipfile.ZipFile(os.path.join(raw, cityscapes.IMAGES_ZIP), "w") as images,
        zipfile.ZipFile(os.path.join(raw, cityscapes.LABELS_ZIP), "w") as annotations,
    ):
        for split, city, stem in CITYSCAPES_FILES:
            image_bytes = b"not a png" if stem == corrupt else png(random_image(rng))
            images.writestr(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", image_bytes)
            label = rng.integers(0, 34, (H, W)).astype(np.uint8)
            label[0, :3] = (7, 0, 40)  # road, unlabeled, not a Cityscapes id
            labels[stem] = label
            if stem != skip_label:
                annotations.writestr(cityscapes.label_path(split, city, stem), png(label))
    return labels


def write_ade20k(raw, rng, counts=(("train", 3), ("val", 2))):
    labels = {}
    for split, count in counts:
        folder = ade20k.SPLIT_DIRS[split]
        for kind in ("images", "annotations"):
            os.makedirs(os.path.join(raw, ade20k.ROOT, kind, folder), exist_ok=True)
        for i in range(1, count + 1):
            stem = f"ADE_{split}_{i:08d}"
            Image.fromarray(random_image(rng)).save(
                os.path.join(raw, ade20k.ROOT, "images", folder, stem + ".jpg")
            )
            label = rng.integers(0, 151, (H, W)).astype(np.uint8)
            label[0, :3] = (0, 1, 200)
            labels[stem] = label
            Image.fromarray(label).save(
                os.path.join(raw, ade20k.ROOT, "annotations", folder, stem + ".png")
            )
    return labels


def write_voc(raw, rng, ids):
    voc = os.path.join(raw, pascal_context.VOC_ROOT)
    os.makedirs(os.path.join(voc, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(voc, "ImageSets", "SegmentationContext"), exist_ok=True)
    for split, split_ids in ids.items():
        with open(os.path.join(voc, "ImageSets", "SegmentationContext", f"{split}.txt"), "w") as f:
            f.write("\n".join(split_ids) + "\n")
        for image_id in split_ids:
            Image.fromarray(random_image(rng)).save(
                os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
            )


def write_video(path, colour, frames=6, height=16, width=24):
    """An mpeg4 video of `frames` frames of one flat colour (so decoding is checkable)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = np.empty((height, width, 3), np.uint8)
            image[:] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
