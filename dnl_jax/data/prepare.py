"""Prepare a dataset from its raw download into array_record shards that `load_split` reads.

    python -m dnl_jax.data.prepare NAME --manual_dir RAW --data_dir OUT [--num_shards S]
        [--overwrite] [--short_side 256 --max_frames 300 --num_workers N]   (video only)

NAME is one of DATASETS: cityscapes, ade20k, pascal_context (59 classes), kinetics (any video
dataset in the Kinetics layout) and ucf101 (split 1; see dnl_jax/data/video.py). The expected
raw layout of each is in its module's docstring. Output: OUT/NAME/ with meta.json and
SPLIT.array_record-* shards, renamed into place only once complete (see records.py). Pixels whose
raw label lies outside the format's range become 255 and are reported.

We write array_record with our own writers rather than through tfds builders: the records are
what grain reads, and this keeps TensorFlow out of the install and out of CI.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dnl_jax.data import ade20k, cityscapes, pascal_context, records, video

SEGMENTATION = {"cityscapes": cityscapes, "ade20k": ade20k, "pascal_context": pascal_context}
VIDEO = {"kinetics": video.kinetics_listing, "ucf101": video.ucf101_listing}
DATASETS = (*SEGMENTATION, *VIDEO)


def prepare(name: str, manual_dir: str, data_dir: str, *, num_shards: int = 1,
            overwrite: bool = False, short_side: int = 256, max_frames: int = 300,
            num_workers: int = 1, progress: bool = False, log=print) -> str:
    """Prepares dataset `name`; returns its directory. Raises ValueError on any bad input.

    `progress` shows a tqdm bar per split (the command line turns it on)."""
    if name in SEGMENTATION:
        module = SEGMENTATION[name]
        counter = records.OutOfRangeCounter()
        splits = module.build_splits(manual_dir, counter)
        meta = {**module.META, "task": "segmentation"}
        split_stats = counter.split_stats
    elif name in VIDEO:
        listed, classes = VIDEO[name](manual_dir)
        splits = video.build_splits(manual_dir, listed, classes, short_side=short_side,
                                    max_frames=max_frames, num_workers=num_workers)
        meta = {"task": "video", "classes": classes}
        split_stats = None
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}.")
    if progress:
        from tqdm import tqdm

        splits = {split: (lambda make=make, split=split: tqdm(make(), desc=f"{name}/{split}",
                                                               unit=" examples"))
                  for split, make in splits.items()}
    out = records.write_dataset(data_dir, name, splits, meta=meta, num_shards=num_shards,
                                overwrite=overwrite, split_stats=split_stats)
    meta = records.read_meta(data_dir, name)
    for split, info in meta["splits"].items():
        log(f"{name}/{split}: {info['num_examples']} examples")
        if info.get("out_of_range_pixels"):
            log(f"  warning: {info['out_of_range_pixels']} pixels in {info['out_of_range_images']} "
                f"images had labels outside the class range and were set to 255 (ignore), e.g. "
                f"{info['out_of_range_examples'][:5]}")
    log(f"written to {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=DATASETS)
    parser.add_argument("--manual_dir", required=True, help="folder holding the raw download")
    parser.add_argument("--data_dir", required=True, help="output root; writes DATA_DIR/NAME")
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--short_side", type=int, default=256, help="video frames only")
    parser.add_argument("--max_frames", type=int, default=300, help="video frames only")
    parser.add_argument("--num_workers", type=int, default=1,
                        help="video only: processes decoding videos in parallel")
    args = parser.parse_args(argv)
    try:
        prepare(args.name, args.manual_dir, args.data_dir, num_shards=args.num_shards,
                overwrite=args.overwrite, short_side=args.short_side, max_frames=args.max_frames,
                num_workers=args.num_workers, progress=True)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
