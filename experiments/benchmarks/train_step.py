"""Times one segmentor training step (default: DNL R50-D8, batch 2 of 512×512 images, 19 classes)
on whatever device JAX sees: the trainer's own pure step (`dnl_jax.train.step.make_train_step`:
forward with the aux head, loss, backward, SGD update), jitted. Not part of CI.

    .venv/bin/python experiments/benchmarks/train_step.py
    .venv/bin/python experiments/benchmarks/train_step.py --model fcn_r50-d8 --size 256,256

Prints compile time, the best step time over `--repeats`, images/s, XLA's FLOP count of the
step and the model FLOP utilisation against the same-run jitted float32 matmul peak, and writes
them to experiments/benchmarks/results/train_step_<model>_<H>x<W>_b<B>_<platform>.{json,png}.
"""

from __future__ import annotations

import argparse
import time

import bench_utils


def build_step(
    model: str,
    num_classes: int,
    batch_size: int,
    height: int,
    width: int,
    axis_name=None,
    **overrides,
):
    """(train step function, not jitted; initial `TrainState`; random batch) for a registry
    segmentation model with mmseg's SGD settings (lr 0.01, momentum 0.9, weight decay 5e-4, poly
    schedule). `overrides` go to `tasks.get_model` (e.g. dtype=jnp.bfloat16); `axis_name` names
    the pmap axis for the model's batch norm and the step's gradient mean (None under jit)."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from dnl_jax import models, tasks
    from dnl_jax.train import step as step_lib

    bundle = tasks.get_model(model, num_classes, axis_name=axis_name, **overrides)
    images = jax.random.normal(jax.random.key(0), (batch_size, height, width, 3), jnp.float32)
    labels = jax.random.randint(jax.random.key(1), (batch_size, height, width), 0, num_classes)
    batch = {"image": images, "label": labels.astype(jnp.int32)}

    variables = models.init_variables(bundle.module, jax.random.key(2), images[:1])
    opt = ml_collections.ConfigDict(
        dict(
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            poly_power=0.9,
            min_lr=1e-4,
            warmup_steps=0,
            warmup_ratio=0.1,
            grad_clip_norm=0.0,
        )
    )
    schedule = step_lib.learning_rate_schedule(opt, 80_000)
    optimizer = step_lib.make_optimizer(opt, 80_000)
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
        rng=jax.random.key_data(jax.random.key(3)),
    )
    return step_lib.make_train_step(bundle, optimizer, schedule, axis_name=axis_name), state, batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="dnl_r50-d8")
    parser.add_argument("--size", default="512,512", help="H,W")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num_classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import jax
    import numpy as np

    from dnl_jax import models

    height, width = (int(s) for s in args.size.split(","))
    step_fn, state, batch = build_step(args.model, args.num_classes, args.batch, height, width)
    train_step = jax.jit(step_fn, donate_argnums=0)

    start = time.perf_counter()
    lowered = train_step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops = models.summary_flops(lowered)
    print(
        f"compiled in {compile_s:.1f} s; XLA counts {flops / 1e9 if flops else float('nan'):.1f} "
        "GFLOP per step",
        flush=True,
    )

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
        print(f"step {len(times)}: {times[-1]:.2f} s", flush=True)
    loss = float(metrics["loss"])
    assert np.isfinite(loss), loss

    peak = bench_utils.matmul_peak_gflops()
    best = min(times)
    result = dict(
        model=args.model,
        batch=args.batch,
        height=height,
        width=width,
        platform=jax.default_backend(),
        device=str(jax.devices()[0].device_kind),
        compile_s=round(compile_s, 2),
        step_s=[round(t, 3) for t in times],
        best_step_s=round(best, 3),
        images_per_s=round(args.batch / best, 3),
        step_gflop=round(flops / 1e9, 1) if flops else None,
        achieved_gflops=round(flops / best / 1e9, 1) if flops else None,
        matmul_peak_gflops=round(peak, 1),
        mfu=round(flops / best / 1e9 / peak, 3) if flops else None,
        loss=round(loss, 4),
    )
    print(
        f"{args.model} train step, batch {args.batch} x {height}x{width} on "
        f"{result['platform']} ({result['device']})"
    )
    for key, value in result.items():
        print(f"  {key:>20}: {value}")
    name = f"train_step_{args.model}_{height}x{width}_b{args.batch}_{result['platform']}"
    result["machine"] = bench_utils.machine_description()
    print("saved", bench_utils.save_json(name, result))
    print("saved", bench_utils.save_figure(name, plot(result)))


def plot(result: dict):
    """Bar chart: the step's achieved GFLOP/s beside the same-run matmul peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    values = [result["achieved_gflops"] or 0.0, result["matmul_peak_gflops"]]
    axis.bar(["train step (XLA FLOP count)", "float32 matmul peak"], values)
    axis.set(
        ylabel="GFLOP/s",
        title=f"{result['model']} train step, batch {result['batch']} of "
        f"{result['height']}x{result['width']}\n{result['images_per_s']} images/s on "
        f"{result['platform']}, MFU {result['mfu']}",
    )
    return figure


if __name__ == "__main__":
    main()
