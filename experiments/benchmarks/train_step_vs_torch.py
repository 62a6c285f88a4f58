"""Our whole segmentor train step against PyTorch's on the same machine, interleaved:

    .venv/bin/python experiments/benchmarks/train_step_vs_torch.py
    .venv/bin/python experiments/benchmarks/train_step_vs_torch.py --models dnl_r50-d8 --sizes 256

For each model (DNL / NL / FCN R50-D8) and size (256², 512²; batch 2, 19 classes, float32):
- forward: inference logits at the image size (eval mode; PyTorch under `torch.no_grad`);
- step: forward with the auxiliary head + cross-entropy (ignore 255, aux weight 0.4) + backward
  + SGD (lr 0.01, momentum 0.9, weight decay 5e-4): ours is the trainer's own jitted step
  (`train_step.build_step`, state donated); PyTorch's the same computation in eager mode.
The PyTorch model is the project's mmseg-structured reference (tests/torch_reference.py:
ResNetV1c-D8 + FCNHead with the DNL / NL block between its convs, aux FCNHead on stage 3);
mmseg's own classes do not import here (mmseg 1.2.2 wants ftfy and more). Differences, all
costing us time, not PyTorch: our heads apply dropout 0.1 before the classifier (mmseg's do,
the reference has none) and our step also returns metrics (pixel accuracy, gradient norm).

The contenders of a (model, size) run round-robin for `--rounds` rounds after a warm-up
call each (compilation), so all see the same stretch of a shared machine's load; the table gives
medians and the ratio PyTorch time / our time (> 1: we are faster). Writes
results/train_step_vs_torch.{json,png} (merged with earlier runs by (model, size)). `--ab` adds
our step with the wide convolutions' gradients from matmuls (`layers.MATMUL_GRAD_MIN_CHANNELS`
= 256, off by default) to the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import bench_utils
import jax
import numpy as np
import torch
import torch.nn.functional as F
import train_step as train_step_bench

from dnl_jax import tasks
from dnl_jax.core import layers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import torch_reference as ref  # noqa: E402

NUM_CLASSES, IGNORE, AUX_WEIGHT = 19, 255, 0.4
CONTEXT = {"dnl_r50-d8": "dnl", "nl_r50-d8": "nl", "fcn_r50-d8": None}


class TorchSegmentor(torch.nn.Module):
    """mmseg EncoderDecoder (R50-D8) from the reference modules, with the aux head and loss."""

    def __init__(self, context):
        super().__init__()
        self.backbone = ref.ResNetV1c((3, 4, 6, 3), bottleneck=True)
        self.decode_head = ref.FCNHead(2048, 512, NUM_CLASSES, context=context)
        self.auxiliary_head = ref.FCNHead(1024, 256, NUM_CLASSES, num_convs=1, concat_input=False)

    def forward(self, images, train: bool):
        stages = self.backbone(images)

        def resize(x):
            return F.interpolate(
                x,
                size=images.shape[2:],
                mode="bilinear",
                align_corners=False,
            )

        logits = resize(self.decode_head(stages[-1]))
        return (logits, resize(self.auxiliary_head(stages[-2]))) if train else logits


def torch_contenders(model: str, images: np.ndarray, labels: np.ndarray):
    """(forward, step) closures of the PyTorch reference on NCHW copies of the batch."""
    torch.manual_seed(0)
    net = TorchSegmentor(CONTEXT[model])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))

    def forward():
        net.eval()
        with torch.no_grad():
            return net(x, train=False)

    def step():
        net.train()
        optimizer.zero_grad(set_to_none=True)
        logits, aux = net(x, train=True)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE) + AUX_WEIGHT * F.cross_entropy(
            aux, y, ignore_index=IGNORE
        )
        loss.backward()
        optimizer.step()
        return loss

    return forward, step


def jax_contenders(model: str, batch_size: int, size: int, with_matmul_conv_grads: bool):
    """{name: closure} of ours and (images, labels); the step carries its donated state along.
    With `with_matmul_conv_grads`, also the step compiled with `layers.MATMUL_GRAD_MIN_CHANNELS`
    = 256 ('jax_step_matmul_conv_grads': wide convolutions' gradients from matmuls), for an A/B
    in one run."""
    step_fn, state, batch = train_step_bench.build_step(model, NUM_CLASSES, batch_size, size, size)
    bundle = tasks.get_model(model, NUM_CLASSES)
    apply = jax.jit(
        lambda params, stats, x: bundle.module.apply(
            {"params": params, "batch_stats": stats}, x, train=False
        )["logits"]
    )
    compile_step = lambda: jax.jit(step_fn, donate_argnums=0).lower(state, batch).compile()  # noqa
    steps = {"jax_step": compile_step()}
    if with_matmul_conv_grads:
        with matmul_conv_gradients():
            steps["jax_step_matmul_conv_grads"] = compile_step()
    holder = {"state": state}

    def forward():
        return apply(holder["state"].params, holder["state"].batch_stats, batch["image"])

    def make_step(compiled):
        def train_step():
            holder["state"], metrics = compiled(holder["state"], batch)
            return metrics["loss"]

        return train_step

    contenders = {"jax_forward": forward, **{k: make_step(v) for k, v in steps.items()}}
    return contenders, np.asarray(batch["image"]), np.asarray(batch["label"])


@contextlib.contextmanager
def matmul_conv_gradients():
    """Within: models traced take the gradients of convolutions with >= 256 input channels from
    matmuls (`layers.MATMUL_GRAD_MIN_CHANNELS` is read at trace time)."""
    saved, layers.MATMUL_GRAD_MIN_CHANNELS = layers.MATMUL_GRAD_MIN_CHANNELS, 256
    try:
        yield
    finally:
        layers.MATMUL_GRAD_MIN_CHANNELS = saved


def compare(model: str, size: int, batch_size: int, rounds: int, ab: bool) -> dict:
    load_before = os.getloadavg()[0]
    ours, images, labels = jax_contenders(model, batch_size, size, ab)
    torch_forward, torch_step = torch_contenders(model, images, labels)
    contenders = {**ours, "torch_forward": torch_forward, "torch_step": torch_step}
    start = time.perf_counter()
    times = bench_utils.time_interleaved(contenders, rounds, block=bench_utils.block_jax_results)
    medians = {name: statistics.median(t) for name, t in times.items()}
    row = dict(
        model=model,
        size=size,
        batch=batch_size,
        rounds=rounds,
        torch_threads=torch.get_num_threads(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        times_s={k: [round(x, 3) for x in v] for k, v in times.items()},
        median_s={k: round(v, 3) for k, v in medians.items()},
        forward_ratio=round(medians["torch_forward"] / medians["jax_forward"], 3),
        step_ratio=round(medians["torch_step"] / medians["jax_step"], 3),
        **(
            {
                "step_ratio_matmul_conv_grads": round(
                    medians["torch_step"] / medians["jax_step_matmul_conv_grads"], 3
                )
            }
            if ab
            else {}
        ),
        load_average_before=round(load_before, 2),
        load_average_after=round(os.getloadavg()[0], 2),
        timed_s=round(time.perf_counter() - start, 1),
    )
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", default="dnl_r50-d8,nl_r50-d8,fcn_r50-d8")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ab",
        action="store_true",
        help="also time our step with matmul conv gradients (>= 256 channels)",
    )
    bench_utils.add_torch_threads_argument(parser)
    args = parser.parse_args()
    bench_utils.set_torch_threads(args.torch_threads)
    unknown = sorted(set(args.models.split(",")) - set(CONTEXT))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(CONTEXT)}.")
    rows = [
        compare(model, int(size), args.batch, args.rounds, args.ab)
        for size in args.sizes.split(",")
        for model in args.models.split(",")
    ]
    header = [
        "model",
        "size",
        "ours fwd s",
        "torch fwd s",
        "fwd ratio",
        "ours step s",
        "torch step s",
        "step ratio",
        "ours step, matmul conv grads s (--ab)",
        "load avg",
    ]
    bench_utils.print_table(
        header,
        [
            [
                r["model"],
                f"{r['batch']}×{r['size']}²",
                r["median_s"]["jax_forward"],
                r["median_s"]["torch_forward"],
                r["forward_ratio"],
                r["median_s"]["jax_step"],
                r["median_s"]["torch_step"],
                r["step_ratio"],
                r["median_s"].get("jax_step_matmul_conv_grads", "-"),
                f"{r['load_average_before']}→{r['load_average_after']}",
            ]
            for r in rows
        ],
    )
    save(rows)


def save(rows: list[dict]) -> None:
    """Merges `rows` into results/train_step_vs_torch.json by (model, size, batch, torch threads);
    PNG of all."""
    path = os.path.join(bench_utils.RESULTS_DIR, "train_step_vs_torch.json")
    previous = []
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)["rows"]
    key = lambda r: (r["model"], r["size"], r["batch"], r.get("torch_threads", 0))  # noqa: E731
    merged = {key(r): r for r in previous + rows}
    payload = {
        "machine": bench_utils.machine_description(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rows": sorted(merged.values(), key=key),
    }
    print("saved", bench_utils.save_json("train_step_vs_torch", payload))
    print("saved", bench_utils.save_figure("train_step_vs_torch", plot(payload["rows"])))


def plot(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [
        f"{r['model'].split('_')[0]} {r['size']}² {r.get('torch_threads', '?')}t" for r in rows
    ]
    positions = np.arange(len(rows))
    for axis, kind in zip(axes, ("forward", "step"), strict=False):
        for offset, side in ((-0.2, "jax"), (0.2, "torch")):
            axis.bar(
                positions + offset,
                [r["median_s"][f"{side}_{kind}"] for r in rows],
                0.4,
                label="dnl_jax" if side == "jax" else "PyTorch (eager)",
            )
        for x, r in zip(positions, rows, strict=False):
            axis.annotate(
                f"{r[f'{kind}_ratio']:.2f}×",
                (x, r["median_s"][f"jax_{kind}"]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axis.set(
            xticks=positions,
            ylabel="seconds (median)",
            title=f"R50-D8 {kind}, batch {rows[0]['batch']} (ratio = torch / ours)",
        )
        axis.set_xticklabels(labels, rotation=30, fontsize=8)
        axis.legend(fontsize=8)
    return figure


if __name__ == "__main__":
    main()
