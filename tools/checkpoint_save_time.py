"""Seconds per checkpoint save of the demo model's training state (`Checkpointer.save`, synchronous,
as the trainer calls it), to compare two versions of dnl_jax (e.g. with and without the per-array
checksums): run it with each on PYTHONPATH, on the same machine, in turns.

    PYTHONPATH=/path/to/checkout python tools/checkpoint_save_time.py --saves 20 --out OUT.json

Prints and writes {'version': dnl_jax path, 'has_checksums', 'first_s', 'median_s', 'mean_s',
'saves'}; the first save (compiles the checksum reduction once per run) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import tempfile
import time

import jax

import dnl_jax
from dnl_jax.data import pipeline
from dnl_jax.data.synthetic import SyntheticSegmentation
from dnl_jax.train import checkpoint as ckpt
from dnl_jax.train import step as step_lib
from dnl_jax.train.trainer import make_init_fn

DEMO_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments",
    "configs",
    "synthetic_dnl_tiny.py",
)


def demo_state():
    """The demo config's (experiments/configs/synthetic_dnl_tiny.py) fresh TrainState."""
    config = runpy.run_path(DEMO_CONFIG)["get_config"]()
    optimizer = step_lib.make_optimizer(config.optimizer, config.total_steps)
    return jax.jit(make_init_fn(optimizer, config))()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--dir", default=None, help="where to save (default: a temporary dir)")
    args = parser.parse_args()
    state = demo_state()
    source = SyntheticSegmentation(8, image_size=8, num_classes=5)
    iterator = iter(
        pipeline.train_dataset(source, seed=0, local_batch=2, process_index=0, process_count=1)
    )
    signature = ckpt.model_signature("dnl_tiny", 7, state.params)  # stored, never compared
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        checkpointer = ckpt.Checkpointer(directory, every_steps=1, keep=2, keep_best=False)
        seconds = []
        for step in range(1, args.saves + 2):
            tick = time.perf_counter()
            checkpointer.save(step, state, iterator, signature, force=True)
            seconds.append(time.perf_counter() - tick)
        has_checksums = os.path.isdir(os.path.join(directory, str(args.saves + 1), "checksums"))
        checkpointer.close()
    result = {
        "version": os.path.dirname(dnl_jax.__file__),
        "has_checksums": has_checksums,
        "first_s": seconds[0],
        "median_s": statistics.median(seconds[1:]),
        "mean_s": statistics.fmean(seconds[1:]),
        "saves": len(seconds) - 1,
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
