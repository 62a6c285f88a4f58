"""Command line: `python -m dnl_jax.cli.convert`; what it does: `dnl_jax.interop.convert`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dnl_jax.cli.output import parse_arguments
from dnl_jax.interop import convert as library
from dnl_jax.interop.convert import convert
from dnl_jax.interop.mapping import ConversionError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dnl_jax.cli.convert",
        description=library.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help=".pth/.pt/.safetensors (no pickled code is run)")
    parser.add_argument("out_dir", help="output directory; OUT_DIR/state is the orbax checkpoint")
    parser.add_argument("--model", default="auto", help="registry name, or 'auto' (default)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32))
    parser.add_argument(
        "--partial", action="store_true", help="load the matching tensors only; initialise the rest"
    )
    parser.add_argument(
        "--nl-mode",
        default="embedded_gaussian",
        choices=("embedded_gaussian", "dot_product"),
        help="mmaction2 video checkpoints: the non-local blocks' mode",
    )
    parser.add_argument(
        "--abn",
        default="auto",
        choices=("auto", "true", "false"),
        help="mmdet checkpoints: whether the batch norms are In-Place ABN (the "
        "official DNL detection checkpoints' SyncABN; auto: v1 norms without "
        "num_batches_tracked are; 'true' for inplace_abn >= 1.1 checkpoints)",
    )
    args = parse_arguments(parser, argv)
    try:
        summary = convert(
            args.checkpoint,
            args.out_dir,
            model=args.model,
            num_classes=args.num_classes,
            output_stride=args.output_stride,
            partial=args.partial,
            nl_mode=args.nl_mode,
            abn={"auto": None, "true": True, "false": False}[args.abn],
        )
    except ValueError as error:
        hint = "\n(strict=False is --partial here.)" if isinstance(error, ConversionError) else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        return 2
    state_dir = os.path.join(os.path.abspath(args.out_dir), "state")
    print(
        f"wrote {state_dir}: loaded {summary['loaded']} of the model's "
        f"{summary['model_tensors']} tensors; missing {len(summary['missing'])}, unexpected "
        f"{len(summary['unexpected'])}, mis-shaped {len(summary['mismatched'])} (details in "
        "conversion.json)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
