"""Full-size Mask R-CNN R50-FPN (mmdet 3.x config, 80 classes) on one accelerator: compile
time, train-step time (loss + gradient) and inference time at 2 × 800 × 1344, float32 and
bfloat16, with random images and 16 random rectangular instances per image.

    python experiments/detection_step_benchmark.py --out /tmp/detection_step.json

Prints one JSON line per measurement and writes them all to --out. Step times are medians of
`--repeats` runs after the compile run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dnl_jax.models.detection.mask_rcnn import MaskRCNN


def random_batch(batch: int, height: int, width: int, instances: int) -> dict:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [width * 0.7, height * 0.7], (batch, instances, 2))
    wh = rng.uniform(16, [width * 0.3, height * 0.3], (batch, instances, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    masks = np.zeros((batch, instances, height, width), np.float32)
    for b in range(batch):
        for i, (x1, y1, x2, y2) in enumerate(boxes[b].astype(int)):
            masks[b, i, y1:y2, x1:x2] = 1
    return {
        "image": jnp.asarray(rng.normal(size=(batch, height, width, 3)), jnp.float32),
        "image_size": jnp.tile(jnp.array([[height, width]], jnp.float32), (batch, 1)),
        "image_id": jnp.arange(batch),
        "gt_boxes": jnp.asarray(boxes),
        "gt_labels": jnp.asarray(rng.integers(0, 80, (batch, instances)), jnp.int32),
        "gt_masks": jnp.asarray(masks),
        "gt_valid": jnp.ones((batch, instances), bool),
    }


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def measure(dtype_name: str, batch: dict, repeats: int) -> list[dict]:
    model = MaskRCNN(dtype=jnp.bfloat16 if dtype_name == "bfloat16" else None)
    variables = jax.jit(lambda key, x: model.init(key, x, method=model.build))(
        jax.random.key(0), batch["image"][:1]
    )

    def loss(params, data, key):
        return model.apply(
            {**variables, "params": params}, data, method=model.loss, rngs={"sampler": key}
        )[0]

    grad_step = jax.jit(jax.value_and_grad(loss))
    first, step = timed(grad_step, variables["params"], batch, jax.random.key(1), repeats=repeats)
    records = [
        {
            "what": "train step (loss + grad)",
            "dtype": dtype_name,
            "compile_plus_first_s": round(first, 2),
            "median_s": round(step, 4),
        }
    ]
    predict = jax.jit(lambda v, x, s: model.apply(v, x, s))
    first, step = timed(predict, variables, batch["image"], batch["image_size"], repeats=repeats)
    records.append(
        {
            "what": "inference",
            "dtype": dtype_name,
            "compile_plus_first_s": round(first, 2),
            "median_s": round(step, 4),
        }
    )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="detection_step.json")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    batch = random_batch(args.batch, args.height, args.width, 16)
    records = []
    for dtype_name in args.dtypes.split(","):
        for record in measure(dtype_name, batch, args.repeats):
            record.update(
                device=str(jax.devices()[0].device_kind),
                shape=[args.batch, args.height, args.width],
            )
            stats = jax.devices()[0].memory_stats() or {}
            record["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
            print(json.dumps(record), flush=True)
            records.append(record)
    with open(args.out, "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
