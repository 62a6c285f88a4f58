"""The README's predict + explain picture: the demo checkpoint on a painted "user photo".

    make demo
    python experiments/predict_example.py --checkpoint runs/demo-latest/checkpoints

Paints a 96x128 image (another size than the 64x64 training scenes: a grey canvas, an ellipse and
a rectangle in the scenes' two colours, a white square as the beacon), runs
`python -m dnl_jax.predict ... --explain` on it (the command's own `main`), and copies the block's
figure to experiments/results/predict_explain_example.png, with the numbers in
experiments/results/predict_explain_example.json (the predicted classes and the unary map's mass
on the beacon's cells against their share of the image).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from dnl_jax.cli.predict import main as predict_main
from dnl_jax.data.synthetic import palette
from dnl_jax.inference import Predictor

HEIGHT, WIDTH = 96, 128
BEACON = (slice(8, 24), slice(100, 116))


def paint() -> np.ndarray:
    canvas = np.full((HEIGHT, WIDTH, 3), 115, np.uint8)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    colours = np.round(palette(2) * 255).astype(np.uint8)
    canvas[((yy - 30) / 18) ** 2 + ((xx - 35) / 25) ** 2 < 1] = colours[0]
    canvas[60:85, 70:115] = colours[1]
    canvas[BEACON] = 255
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default="runs/demo-latest/checkpoints")
    parser.add_argument("--results", default="experiments/results")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="predict_example_")
    photo = os.path.join(work, "my_photo.png")
    Image.fromarray(paint()).save(photo)
    out = os.path.join(work, "predictions")
    code = predict_main([photo, "--checkpoint", args.checkpoint, "--output_dir", out, "--explain"])
    if code:
        raise SystemExit(code)
    figure = os.path.join(args.results, "predict_explain_example.png")
    shutil.copyfile(os.path.join(out, "my_photo_explain_decode_head.dnl_block.png"), figure)
    predictor = Predictor.from_checkpoint(args.checkpoint)
    result = predictor.predict(photo)
    block = predictor.explain(photo).blocks[0]
    beacon = np.zeros((HEIGHT, WIDTH), bool)
    beacon[BEACON] = True
    rows, cols = block.grid
    cells = beacon.reshape(rows, HEIGHT // rows, cols, WIDTH // cols).any(axis=(1, 3)).ravel()
    names = predictor.record.class_names
    classes, counts = np.unique(result.labels, return_counts=True)
    record = {
        "command": "python experiments/predict_example.py --checkpoint " + args.checkpoint,
        "checkpoint": args.checkpoint,
        "predicted_pixels": {names[c]: int(n) for c, n in zip(classes, counts, strict=True)},
        "unary_mass_on_beacon_cells": float(block.unary[cells].sum()),
        "beacon_cells_share": float(cells.mean()),
        "grid": list(block.grid),
    }
    with open(os.path.join(args.results, "predict_explain_example.json"), "w") as file:
        json.dump(record, file, indent=1)
    print(f"wrote {figure}: {json.dumps(record)}")


if __name__ == "__main__":
    main()
