"""Times a real inference forward pass of a registered segmentation model (default: DNL R50-D8
on one 512×512 image), on whatever device JAX sees. Not part of CI.

    .venv/bin/python experiments/forward_benchmark.py
    .venv/bin/python experiments/forward_benchmark.py --model dnl_r101-d8 --size 512,1024 --batch 2

Prints init, compile and per-forward times (seconds) and achieved GFLOP/s (XLA's FLOP count),
and writes them to experiments/results/forward_<model>_<H>x<W>_b<B>_<platform>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="dnl_r50-d8")
    parser.add_argument("--size", default="512,512", help="H,W")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num_classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out_dir", default="experiments/results")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from dnl_jax import models, tasks

    height, width = (int(s) for s in args.size.split(","))
    bundle = tasks.get_model(args.model, args.num_classes)
    images = jax.random.normal(jax.random.key(0), (args.batch, height, width, 3), jnp.float32)

    start = time.perf_counter()
    variables = models.init_variables(bundle.module, jax.random.key(1), images)
    variables = jax.block_until_ready(variables)
    init_s = time.perf_counter() - start

    forward = jax.jit(lambda v, x: bundle.module.apply(v, x, train=False)["logits"])
    start = time.perf_counter()
    lowered = forward.lower(variables, images)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops = models.summary_flops(lowered)

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        logits = jax.block_until_ready(compiled(variables, images))
        times.append(time.perf_counter() - start)
    assert logits.shape == (args.batch, height, width, args.num_classes)
    assert bool(jnp.all(jnp.isfinite(logits)))

    best = min(times)
    result = dict(
        model=args.model,
        input_shape=[args.batch, height, width, 3],
        device=str(jax.devices()[0]),
        platform=jax.default_backend(),
        init_s=init_s,
        compile_s=compile_s,
        forward_s=times,
        best_forward_s=best,
        xla_gflops=None if flops is None else flops / 1e9,
        achieved_gflops_per_s=None if flops is None else flops / 1e9 / best,
    )
    print(f"{args.model} on {result['device']}, input {tuple(result['input_shape'])}")
    print(f"  init     {init_s:8.2f} s")
    print(f"  compile  {compile_s:8.2f} s")
    all_times = ", ".join(f"{t:.3f}" for t in times)
    print(f"  forward  {best:8.3f} s best of {args.repeats} ({all_times})")
    if flops is not None:
        print(f"  {flops / 1e9:,.1f} GFLOPs → {result['achieved_gflops_per_s']:,.1f} GFLOP/s")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(
        args.out_dir,
        f"forward_{args.model}_{height}x{width}_b{args.batch}_{result['platform']}.json",
    )
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
