"""Parameters and FLOPs of registered dnl_jax models (nothing is run: eval_shape + XLA cost
analysis of the lowered inference forward pass).

    .venv/bin/python experiments/model_summary.py                       # the default set below
    .venv/bin/python experiments/model_summary.py --models dnl_r101-d8 --input_shape 1,512,1024,3
    .venv/bin/python experiments/model_summary.py --out results/model_summary.json

Segmentation models take [B, H, W, 3], video models [B, T, H, W, 3]. FLOPs are XLA's count
(2 per multiply-add). Writes a JSON list of the printed summaries.
"""

from __future__ import annotations

import argparse
import json
import os

DEFAULTS = [
    ("dnl_r50-d8", "1,512,1024,3", 19),
    ("dnl_r101-d8", "1,512,1024,3", 19),
    ("nl_r101-d8", "1,512,1024,3", 19),
    ("fcn_r101-d8", "1,512,1024,3", 19),
    ("gc_r50-d8", "1,512,1024,3", 19),
    ("dnl_r50-d8", "1,512,512,3", 150),
    ("dnl_i3d_r50", "1,8,224,224,3", 400),
    ("nl_i3d_r50", "1,8,224,224,3", 400),
    ("dnl_c2d_r50", "1,8,224,224,3", 400),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="*", help="registry names (default: a standard set)")
    parser.add_argument("--input_shape", default=None, help="comma-separated, e.g. 1,512,1024,3")
    parser.add_argument("--num_classes", type=int, default=None)
    parser.add_argument("--out", default="experiments/results/model_summary.json")
    args = parser.parse_args()

    from dnl_jax import tasks  # after argparse, so --help is instant

    if args.models:
        if args.input_shape is None:
            raise SystemExit("--input_shape is required with --models")
        runs = [(name, args.input_shape, args.num_classes) for name in args.models]
    else:
        runs = DEFAULTS
    results = []
    for name, shape, num_classes in runs:
        shape = tuple(int(s) for s in shape.split(","))
        results.append(tasks.summary(name, shape, num_classes or args.num_classes or 19))
        print()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
