"""Command line: a checkpoint as a `jax.export` artifact (StableHLO with a symbolic batch size)
and its preprocessing record, in one file that `predict --exported` runs without Flax.

    python -m dnl_jax.export --checkpoint runs/demo-latest/checkpoints --output model.jaxexport \\
        [--input_size H,W] [--config CONFIG.py]

A bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from dnl_jax.cli.output import add_log_level_argument, set_library_log_level
from dnl_jax.cli.predict import pair, record_of_config_file
from dnl_jax.inference.export import export_checkpoint


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dnl_jax.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="step directory (or its checkpoints/)")
    p.add_argument("--output", required=True, help="the artifact to write, e.g. model.jaxexport")
    p.add_argument("--input_size", type=pair, help="H,W the exported model takes")
    p.add_argument("--config", help="the training config, for checkpoints without a record")
    add_log_level_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    set_library_log_level(args.log_level)
    start = time.perf_counter()
    try:
        record = record_of_config_file(args.config) if args.config else None
        done = export_checkpoint(args.checkpoint, args.output, args.input_size, record)
    except ValueError as error:
        print(f"export: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    height, width = done["input_size"]
    print(
        f"export: wrote {done['path']} ({done['bytes'] / 1e6:.1f} MB; inputs [batch, {height}, "
        f"{width}, 3], batch symbolic) in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "parser"]
