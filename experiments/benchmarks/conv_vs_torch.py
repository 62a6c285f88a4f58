"""The R50-D8 segmentor's 3×3 convolutions, one by one, in XLA:CPU and in PyTorch, interleaved:

    .venv/bin/python experiments/benchmarks/conv_vs_torch.py --size 256 [--rounds 3]

For each distinct 3×3 convolution of DNL R50-D8 (stem, the four stages' dilated 3×3s, the heads'
3×3s) at batch 2 of size² images, float32, channel-last in JAX (NHWC × HWIO, what flax uses) and
NCHW in PyTorch (its native layout), times forward and forward+backward (gradients w.r.t. input
and weight) of Σ conv(x, w) · cotangent, for these JAX expressions of the same convolution:

- xla: `lax.conv_general_dilated` (what `nn.Conv` runs);
- taps: Σ over the 9 taps of (shifted, strided slice of the padded input) @ w[tap], a sum of
  matmuls whose gradients autodiff turns into matmuls as well;
- im2col: the 9 slices concatenated on channels, one matmul with w reshaped to [9·Cin, Cout];
- xla+mm: `layers.conv_with_matmul_gradients`, XLA's forward with im2col's gradients (what the
  models run on CPU from `layers.MATMUL_GRAD_MIN_CHANNELS` input channels, when it is set).

Prints per layer the medians and `count ×` each, the sum over the model's convolutions (what
the 3×3 convolutions cost one train step), and writes results/conv_vs_torch_<size>.{json,png}
after every layer (rows of earlier runs at the same size are kept unless re-timed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import bench_utils
import jax
import jax.numpy as jnp
import numpy as np
import torch

from dnl_jax.core import layers

# (name, Cin, Cout, stride, dilation, input side as a fraction of the image, count in the model)
LAYERS = (
    ("stem 3→32 /2", 3, 32, 2, 1, 1, 1),
    ("stem 32→32", 32, 32, 1, 1, 2, 1),
    ("stem 32→64", 32, 64, 1, 1, 2, 1),
    ("stage1 64", 64, 64, 1, 1, 4, 3),
    ("stage2 128 /2", 128, 128, 2, 1, 4, 1),
    ("stage2 128", 128, 128, 1, 1, 8, 3),
    ("stage3 256 d2", 256, 256, 1, 2, 8, 6),
    ("stage4 512 d4", 512, 512, 1, 4, 8, 3),
    ("head 2048→512", 2048, 512, 1, 1, 8, 1),
    ("head 512→512", 512, 512, 1, 1, 8, 1),
    ("head cat 2560→512", 2560, 512, 1, 1, 8, 1),
    ("aux 1024→256", 1024, 256, 1, 1, 8, 1),
)
VARIANTS = ("xla", "taps", "im2col", "xla+mm")


def shifted_slices(x, kernel: int, stride: int, dilation: int):
    """The kernel² slices of the 'same'-padded `[B, H, W, C]` meeting each tap: `[B, Ho, Wo, C]`."""
    pad = dilation * (kernel // 2)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    return [
        jax.lax.slice(
            padded,
            (0, i * dilation, j * dilation, 0),
            (
                x.shape[0],
                i * dilation + (out_h - 1) * stride + 1,
                j * dilation + (out_w - 1) * stride + 1,
                x.shape[3],
            ),
            (1, stride, stride, 1),
        )
        for i in range(kernel)
        for j in range(kernel)
    ]


def conv(variant: str, x, w, stride: int, dilation: int):
    """`[B, H, W, Cin]` ⊛ `[3, 3, Cin, Cout]`, 'same' padding, → `[B, H/s, W/s, Cout]`."""
    pad = dilation * (w.shape[0] // 2)
    if variant == "xla+mm":
        return layers.conv_with_matmul_gradients(
            x, w, (stride, stride), ((pad, pad),) * 2, (dilation, dilation)
        )
    if variant == "xla":
        return jax.lax.conv_general_dilated(
            x,
            w,
            (stride, stride),
            [(pad, pad)] * 2,
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    slices = shifted_slices(x, w.shape[0], stride, dilation)
    taps = w.reshape(-1, *w.shape[2:])
    if variant == "taps":
        return sum(jnp.einsum("bhwc,cf->bhwf", s, t) for s, t in zip(slices, taps, strict=False))
    return jnp.concatenate(slices, axis=-1) @ taps.reshape(-1, w.shape[-1])


def jax_fns(variant, x, w, cotangent, stride, dilation):
    forward = jax.jit(lambda x, w: conv(variant, x, w, stride, dilation))
    grads = jax.jit(
        jax.grad(
            lambda x, w: jnp.sum(conv(variant, x, w, stride, dilation) * cotangent), argnums=(0, 1)
        )
    )
    return (lambda: forward(x, w)), (lambda: grads(x, w))


def torch_fns(x, w, cotangent, stride, dilation):
    tx = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    tw = torch.from_numpy(np.ascontiguousarray(np.asarray(w).transpose(3, 2, 0, 1)))
    tc = torch.from_numpy(np.ascontiguousarray(np.asarray(cotangent).transpose(0, 3, 1, 2)))
    call = lambda a, b: torch.nn.functional.conv2d(a, b, None, stride, dilation, dilation)  # noqa

    def forward():
        with torch.no_grad():
            return call(tx, tw)

    def forward_backward():
        a, b = tx.clone().requires_grad_(), tw.clone().requires_grad_()
        return torch.autograd.grad((call(a, b) * tc).sum(), (a, b))

    return forward, forward_backward


def time_layer(layer, size: int, batch: int, rounds: int, variants=VARIANTS) -> dict:
    name, cin, cout, stride, dilation, fraction, count = layer
    side = size // fraction
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, side, side, cin))
    w = jax.random.normal(keys[1], (3, 3, cin, cout)) * (2 / (9 * cin)) ** 0.5
    out_side = -(-side // stride)
    cotangent = jax.random.normal(keys[2], (batch, out_side, out_side, cout))
    reference = np.asarray(conv("xla", x, w, stride, dilation))
    fns = {}
    for variant in variants:
        forward, forward_backward = jax_fns(variant, x, w, cotangent, stride, dilation)
        np.testing.assert_allclose(np.asarray(forward()), reference, rtol=2e-4, atol=2e-4)
        fns[f"{variant} fwd"], fns[f"{variant} fwd+bwd"] = forward, forward_backward
    fns["torch fwd"], fns["torch fwd+bwd"] = torch_fns(x, w, cotangent, stride, dilation)
    times = bench_utils.time_interleaved(fns, rounds, block=bench_utils.block_jax_results)
    medians = {k: round(statistics.median(v), 4) for k, v in times.items()}
    print(name, side, medians, flush=True)
    return dict(
        layer=name,
        cin=cin,
        cout=cout,
        stride=stride,
        dilation=dilation,
        side=side,
        count=count,
        median_s=medians,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", default="", help="comma-separated name prefixes (default all)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"JAX expressions to time, of {VARIANTS}"
    )
    bench_utils.add_torch_threads_argument(parser)
    args = parser.parse_args()
    bench_utils.set_torch_threads(args.torch_threads)
    variants = tuple(v for v in args.variants.split(",") if v)
    if not set(variants) <= set(VARIANTS):
        parser.error(f"--variants {variants}: choose from {VARIANTS}.")
    chosen = [
        layer
        for layer in LAYERS
        if not args.layers or any(layer[0].startswith(prefix) for prefix in args.layers.split(","))
    ]
    name = f"conv_vs_torch_{args.size}"
    path = os.path.join(bench_utils.RESULTS_DIR, f"{name}.json")
    # Rows of earlier runs at this size stay unless re-measured (--layers re-times a few).
    previous = []
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)["rows"]
    measured = {r["layer"]: r for r in previous}
    for layer in chosen:
        row = time_layer(layer, args.size, args.batch, args.rounds, variants)
        measured[row["layer"]] = {**row, "load_average": round(os.getloadavg()[0], 2)}
        rows = [measured[layer[0]] for layer in LAYERS if layer[0] in measured]
        payload = dict(
            size=args.size,
            batch=args.batch,
            rows=rows,
            machine=bench_utils.machine_description(),
            torch_threads=torch.get_num_threads(),
        )
        bench_utils.save_json(name, payload)  # after every layer: a killed run keeps its rows
    columns = [
        f"{v} {k}"
        for k in ("fwd", "fwd+bwd")
        for v in (*VARIANTS, "torch")
        if all(f"{v} {k}" in r["median_s"] for r in rows)
    ]
    totals = {c: round(sum(r["count"] * r["median_s"][c] for r in rows), 3) for c in columns}
    bench_utils.print_table(
        ["layer", "×", "side", *columns, "load"],
        [
            [
                r["layer"],
                r["count"],
                r["side"],
                *(r["median_s"][c] for c in columns),
                r.get("load_average"),
            ]
            for r in rows
        ]
        + [["**sum × count**", "", "", *(totals[c] for c in columns), ""]],
    )
    print("saved", bench_utils.save_json(name, {**payload, "totals_s": totals}))
    print("saved", bench_utils.save_figure(name, plot(payload, columns)))


def plot(payload: dict, columns: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    figure, axis = plt.subplots(figsize=(11, 4))
    positions = np.arange(len(rows))
    chosen = [c for c in columns if c.endswith("fwd+bwd")]
    for i, column in enumerate(chosen):
        heights = [r["count"] * r["median_s"][column] for r in rows]
        axis.bar(positions + (i - len(chosen) / 2) * 0.16, heights, 0.16, label=column)
    axis.set(
        xticks=positions,
        ylabel="seconds × count (median)",
        title=f"R50-D8 3×3 convolutions fwd+bwd, batch {payload['batch']} of "
        f"{payload['size']}², float32",
    )
    axis.set_xticklabels([r["layer"] for r in rows], rotation=30, fontsize=8)
    axis.legend(fontsize=8)
    return figure


if __name__ == "__main__":
    main()
