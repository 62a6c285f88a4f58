"""Input pipeline throughput: images/s per CPU core through the real train path, and clips/s.

    .venv/bin/python experiments/benchmarks/input_pipeline.py [--images 8] [--batches 6]

Segmentation: Cityscapes-size 2048×1024 PNG images (and PNG label maps) written into the
official zips' layout, prepared by `dnl_jax.data.prepare` (the tfds builder, array_record), read
by `load_split` and run through `pipeline.train_dataset` with the Cityscapes recipe's transform
(mmseg: resize of (2048, 1024) × U[0.5, 2], 512×1024 crop with cat_max_ratio, flip,
photometric distortion, normalisation) and batching (batch 2), for several settings of
`config.data.worker_processes` / `worker_threads`. Per core: images per CPU-second of the
process (all its threads), which a shared machine's load does not change the way it changes
wall time.

Video: Kinetics-like videos (340×256 after preparation's short side 256, 300 stored frames)
through `transforms.VideoTrainTransform` (32 frames, stride 2, short side U[256, 320], 224 crop):
clips/s (and per CPU-second) with the stored JPEGs decoded lazily (only the clip's 32 frames;
`video.EncodedFrames`)
and, for comparison, with every stored frame decoded first (the earlier behaviour).

The images are synthetic (smooth colour fields plus noise, so PNG sizes are in the range of
real street scenes, 1.5–3 MB); writes results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zipfile

import bench_utils
import numpy as np
from PIL import Image

from dnl_jax import tasks
from dnl_jax.data import cityscapes, pipeline, transforms
from dnl_jax.data.prepare import prepare
from dnl_jax.data.sources import load_split
from dnl_jax.train.config import base_config

WORKER_SETTINGS = ((0, 0), (0, 2), (2, 1))  # (worker_processes, worker_threads)


def street_like(rng, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: a bilinearly upsampled 16×32 colour field plus pixel noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BILINEAR), np.int16)
    return np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_cityscapes_zips(raw: str, count: int, rng) -> float:
    """`count` train images (+ 1 val) in the official zips; returns the mean PNG size in MB."""
    os.makedirs(raw, exist_ok=True)
    sizes = []
    with (
        zipfile.ZipFile(os.path.join(raw, cityscapes.IMAGES_ZIP), "w") as images,
        zipfile.ZipFile(os.path.join(raw, cityscapes.LABELS_ZIP), "w") as labels,
    ):
        for i in range(count + 1):
            split, city = ("val", "frankfurt") if i == count else ("train", "aachen")
            stem = f"{city}_{i:06d}_000019"
            image = png_bytes(street_like(rng, 1024, 2048))
            sizes.append(len(image))
            images.writestr(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", image)
            label = np.repeat(
                np.repeat(rng.integers(0, 34, (32, 64), dtype=np.uint8), 32, 0), 32, 1
            )
            labels.writestr(cityscapes.label_path(split, city, stem), png_bytes(label))
    return statistics.mean(sizes) / 1e6


def batches_per_second(dataset, batches: int) -> tuple[float, float]:
    """(batches per wall second, batches per CPU second of this process, all its threads).

    On a shared machine the second is the one that measures the work: a core's worth of
    this process's CPU time buys that many batches whatever the load (worker processes' CPU
    time is not counted, so it is only meaningful without them)."""
    iterator = iter(dataset)
    next(iterator)  # start-up (worker processes, first reads)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    return (
        batches / (time.perf_counter() - start),
        batches / max(time.process_time() - cpu_start, 1e-9),
    )


def segmentation(work: str, images: int, batches: int, rng) -> list[dict]:
    mb = write_cityscapes_zips(os.path.join(work, "raw"), images, rng)
    prepare(
        "cityscapes", os.path.join(work, "raw"), os.path.join(work, "prepared"), log=lambda _: None
    )
    source = load_split("cityscapes", "train", os.path.join(work, "prepared"))
    data = base_config().data
    data.name = "cityscapes"
    data.segmentation.crop_size, data.segmentation.base_size = (512, 1024), (2048, 1024)
    rows = []
    for processes, threads in WORKER_SETTINGS:
        dataset = pipeline.train_dataset(
            source,
            seed=0,
            local_batch=2,
            process_index=0,
            process_count=1,
            transform=tasks.for_dataset(data.name).train_transform(data),
            worker_processes=processes,
            worker_threads=threads,
        )
        wall, cpu = batches_per_second(dataset, batches)
        rows.append(
            dict(
                kind="cityscapes 2048x1024 PNG → 512x1024 crop",
                processes=processes,
                threads=threads,
                images_per_s=round(2 * wall, 2),
                images_per_cpu_s=round(2 * cpu, 2) if processes == 0 else None,
                png_mb=round(mb, 2),
            )
        )
        print(rows[-1], flush=True)
    return rows


def write_videos(raw: str, count: int, frames: int, rng) -> None:
    import av

    for i in range(count):
        path = os.path.join(raw, "train" if i else "val", f"class{i % 2}", f"v{i}.mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with av.open(path, mode="w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 340, 256, "yuv420p"
            for _ in range(frames):
                frame = av.VideoFrame.from_ndarray(street_like(rng, 256, 340), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())


class DecodeAllFirst(transforms.VideoTrainTransform):
    """The pre-issue-16 behaviour: every stored frame decoded, then the clip sampled."""

    def random_map(self, element, rng):
        return super().random_map({**element, "video": np.asarray(element["video"])}, rng)


def video(work: str, videos: int, clips: int, rng) -> list[dict]:
    write_videos(os.path.join(work, "raw_video"), videos + 1, 300, rng)
    prepare(
        "kinetics",
        os.path.join(work, "raw_video"),
        os.path.join(work, "prepared"),
        short_side=256,
        max_frames=300,
        log=lambda _: None,
    )
    source = load_split("kinetics", "train", os.path.join(work, "prepared"))
    settings = dict(clip_len=32, stride=2, crop_size=224, short_side_range=(256, 320))
    rows = []
    for name, transform in (
        ("lazy (clip frames only)", transforms.VideoTrainTransform),
        ("decode all 300 frames first", DecodeAllFirst),
    ):
        dataset = pipeline.train_dataset(
            source,
            seed=0,
            local_batch=1,
            process_index=0,
            process_count=1,
            transform=transform(**settings),
            worker_processes=0,
            worker_threads=0,
        )
        wall, cpu = batches_per_second(dataset, clips)
        rows.append(
            dict(
                kind=f"kinetics clip 32x224², {name}",
                processes=0,
                threads=0,
                clips_per_s=round(wall, 2),
                clips_per_cpu_s=round(cpu, 2),
            )
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--clips", type=int, default=6)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        rows = segmentation(work, args.images, args.batches, rng)
        rows += video(work, args.videos, args.clips, rng)
    bench_utils.print_table(
        [
            "input",
            "worker processes",
            "threads",
            "images/s (wall)",
            "images per CPU-second (= per core)",
            "clips/s (wall)",
            "clips per CPU-second",
        ],
        [
            [
                r["kind"],
                r["processes"],
                r["threads"],
                r.get("images_per_s"),
                r.get("images_per_cpu_s"),
                r.get("clips_per_s"),
                r.get("clips_per_cpu_s"),
            ]
            for r in rows
        ],
    )
    payload = dict(
        rows=rows,
        machine=bench_utils.machine_description(),
        load_average_before=round(load_before, 2),
        load_average_after=round(os.getloadavg()[0], 2),
    )
    print("saved", bench_utils.save_json("input_pipeline", payload))


if __name__ == "__main__":
    main()
