"""Command line: `python -m dnl_jax.cli.pretrained`; what it does: `dnl_jax.interop.pretrained`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dnl_jax.cli.output import parse_arguments
from dnl_jax.interop import pretrained as library
from dnl_jax.interop.pretrained import convert_backbone
from dnl_jax.train.initialisation import BACKBONES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dnl_jax.cli.pretrained",
        description=library.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help=f"one of {sorted(BACKBONES)}")
    parser.add_argument("checkpoint", help="the downloaded .pth (no pickled code is run)")
    parser.add_argument(
        "--pretrained_dir",
        default="pretrained",
        help="folder of converted backbones (config.model.pretrained_dir)",
    )
    args = parse_arguments(parser, argv)
    if args.name not in BACKBONES:
        print(
            f"error: unknown backbone {args.name!r}; choose one of {sorted(BACKBONES)}.",
            file=sys.stderr,
        )
        return 2
    try:
        summary = convert_backbone(BACKBONES[args.name], args.checkpoint, args.pretrained_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {os.path.join(os.path.abspath(args.pretrained_dir), args.name)}: "
        f"{summary['loaded']} tensors of the ResNet-{summary['depth']} ({summary['layout']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
