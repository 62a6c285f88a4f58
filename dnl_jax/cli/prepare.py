"""Command line: `python -m dnl_jax.cli.prepare`; what it does: `dnl_jax.data.prepare`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dnl_jax.cli.output import parse_arguments
from dnl_jax.data import prepare as library
from dnl_jax.data.prepare import DATASETS, prepare


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=library.__doc__.split("\n")[0])
    parser.add_argument("name", choices=DATASETS)
    parser.add_argument("--manual_dir", required=True, help="folder holding the raw download")
    parser.add_argument("--data_dir", required=True, help="output root; writes DATA_DIR/NAME")
    parser.add_argument(
        "--num_shards",
        type=int,
        default=None,
        help="shards per split (default: tfds chooses by size)",
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--short_side", type=int, default=256, help="video frames only")
    parser.add_argument("--max_frames", type=int, default=300, help="video frames only")
    parser.add_argument(
        "--num_workers",
        type=int,
        default=1,
        help="video only: processes decoding videos in parallel",
    )
    args = parse_arguments(parser, argv)
    try:
        prepare(
            args.name,
            args.manual_dir,
            args.data_dir,
            num_shards=args.num_shards,
            overwrite=args.overwrite,
            short_side=args.short_side,
            max_frames=args.max_frames,
            num_workers=args.num_workers,
            progress=True,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
