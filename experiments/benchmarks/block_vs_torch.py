"""The whole DNL block (512 channels) fwd+bwd: dnl_jax versus a PyTorch mmseg-style block.

    .venv/bin/pip install -e .[bench]
    .venv/bin/python experiments/benchmarks/block_vs_torch.py [--sizes 64 128] [--batch 1]

Both blocks compute mmseg's DisentangledNonLocal2d (reduction 2, use_scale, temperature 0.05,
whitening, unary conv_mask, conv_out 1×1 + BatchNorm in training mode) on the same weights and
input; the script checks that their outputs agree before timing. The PyTorch block below is
written here from mmseg's semantics (it materialises the N × N attention, as mmseg does). Timed:
loss = Σ out², gradient w.r.t. the input and all parameters; the contenders run interleaved,
round by round (the machine's load drifts), and the table gives each one's median (and the
speed-up of the fastest rounds). dnl_jax runs with implementation=None (automatic choice, printed)
and 'xla'. Each round also times a float32 4096² matmul in JAX and in PyTorch, so that each
block's useful GFLOP/s (`block_flop`) is set against its own framework's same-run matmul peak.
Writes results/block_vs_torch.{json,png}.
"""

from __future__ import annotations

import argparse
import os
import statistics

import bench_utils
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from dnl_jax.core import attention, blocks


class TorchDNL2d(tnn.Module):
    """mmseg DisentangledNonLocal2d (embedded Gaussian, whitened, unary), NCHW."""

    def __init__(self, channels: int, reduction: int = 2, temperature: float = 0.05):
        super().__init__()
        self.inter, self.temperature = channels // reduction, temperature
        self.g, self.theta, self.phi = (tnn.Conv2d(channels, self.inter, 1) for _ in range(3))
        self.conv_mask = tnn.Conv2d(channels, 1, 1)
        self.conv_out = tnn.Sequential(
            tnn.Conv2d(self.inter, channels, 1, bias=False), tnn.BatchNorm2d(channels)
        )

    def forward(self, x):
        n, _, h, w = x.shape
        g_x = self.g(x).view(n, self.inter, -1).permute(0, 2, 1)  # [n, HW, C']
        theta_x = self.theta(x).view(n, self.inter, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(n, self.inter, -1)  # [n, C', HW]
        theta_x = theta_x - theta_x.mean(dim=-2, keepdim=True)
        phi_x = phi_x - phi_x.mean(dim=-1, keepdim=True)
        logits = torch.matmul(theta_x, phi_x) / self.inter**0.5 / self.temperature
        y = torch.matmul(logits.softmax(dim=-1), g_x).permute(0, 2, 1).reshape(n, self.inter, h, w)
        unary = self.conv_mask(x).view(n, 1, -1).softmax(dim=-1)
        unary_y = torch.matmul(unary, g_x).permute(0, 2, 1).reshape(n, self.inter, 1, 1)
        return x + self.conv_out(y + unary_y)


def copy_weights(params, module: TorchDNL2d) -> None:
    """Flax 1×1 kernels [1, 1, in, out] → torch [out, in, 1, 1]."""

    def conv(torch_conv, flax_conv):
        kernel = np.array(flax_conv["kernel"])[0, 0].T[..., None, None]
        torch_conv.weight.copy_(torch.from_numpy(kernel.copy()))
        if "bias" in flax_conv:
            torch_conv.bias.copy_(torch.from_numpy(np.array(flax_conv["bias"])))

    with torch.no_grad():
        for name in ("g", "theta", "phi"):
            conv(getattr(module, name), params[name]["conv"])
        conv(module.conv_mask, params["conv_mask"])
        conv(module.conv_out[0], params["conv_out"]["conv"])
        norm = params["conv_out"]["bn"]
        module.conv_out[1].weight.copy_(torch.from_numpy(np.array(norm["scale"])))
        module.conv_out[1].bias.copy_(torch.from_numpy(np.array(norm["bias"])))


def jax_step(implementation, variables):
    module = blocks.DisentangledNonLocal(implementation=implementation)

    def loss(params, x):
        out, _ = module.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(jnp.square(out)), out

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))


def torch_step(module, x):
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.square().sum().backward()
    return out


def block_flop(batch: int, positions: int, channels: int, inner: int) -> int:
    """Useful FLOP of one DNL block fwd+bwd (gradients w.r.t. the input and the parameters).

    Pairwise attention: forward q̂k̂ᵀ and p·g (2·N²·C' each), backward 4 such matmuls, so
    12·B·N²·C'. The 1×1 convolutions (theta, phi, g: C→C'; conv_mask: C→1; conv_out: C'→C) cost
    2·B·N·(3·C·C' + C + C'·C) forward and three times that with both gradients. Element-wise work
    (softmax, whitening, batch norm) and the chunked kernel's recomputed logits are not counted.
    """
    attention_flop = 12 * batch * positions**2 * inner
    convolution_flop = (
        3 * 2 * batch * positions * (3 * channels * inner + channels + inner * channels)
    )
    return attention_flop + convolution_flop


def matmul_contenders(size: int = 4096) -> dict:
    """A float32 size² matmul in each framework (2·size³ FLOP), for same-run peaks."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    a_torch = torch.from_numpy(np.array(a))
    matmul = jax.jit(lambda m: m @ m)
    return dict(jax_matmul=lambda: matmul(a), torch_matmul=lambda: a_torch @ a_torch)


def measure(side: int, batch: int, channels: int, repeats: int) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(side), (batch, side, side, channels))
    variables = blocks.DisentangledNonLocal().init(jax.random.PRNGKey(1), x)
    # BN scale 1 instead of the zero init, so the attention reaches the output being compared.
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    params["conv_out"]["bn"]["scale"] = jnp.ones_like(params["conv_out"]["bn"]["scale"])
    variables = {**variables, "params": params}
    reference = TorchDNL2d(channels)
    copy_weights(params, reference)
    x_torch = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())

    inner = jax.ShapeDtypeStruct((batch, side * side, channels // 2), x.dtype)
    auto = attention.select_implementation(inner, inner, inner)
    row = dict(side=side, n=side * side, batch=batch, auto_implementation=auto)
    jax_auto, jax_xla = jax_step(None, variables), jax_step("xla", variables)
    _, out_jax = jax_auto(params, x)
    out_torch = torch_step(reference, x_torch).detach().numpy().transpose(0, 2, 3, 1)
    row["max_abs_diff_outputs"] = float(np.max(np.abs(np.asarray(out_jax) - out_torch)))

    def wait(result):  # torch runs eagerly (returns when done); jax results are awaited
        return result if isinstance(result, torch.Tensor) else jax.block_until_ready(result)

    rounds = bench_utils.time_interleaved(
        dict(
            jax_auto=lambda: jax_auto(params, x),
            jax_xla=lambda: jax_xla(params, x),
            torch=lambda: torch_step(reference, x_torch),
            **matmul_contenders(),
        ),
        repeats,
        block=wait,
    )
    row["rounds_s"] = rounds
    row.update({f"{name}_s": statistics.median(times) for name, times in rounds.items()})
    row.update({f"{name}_min_s": min(times) for name, times in rounds.items()})
    row["speedup_auto_vs_torch"] = row["torch_s"] / row["jax_auto_s"]
    row["speedup_auto_vs_torch_min"] = row["torch_min_s"] / row["jax_auto_min_s"]
    flop = block_flop(batch, side * side, channels, channels // 2)
    row["block_gflop"] = flop / 1e9
    for framework, block_name in (("jax", "jax_auto"), ("torch", "torch")):
        peak = 2 * 4096**3 / row[f"{framework}_matmul_s"] / 1e9
        row[f"{framework}_matmul_peak_gflops"] = peak
        row[f"{block_name}_gflops"] = flop / row[f"{block_name}_s"] / 1e9
        row[f"{block_name}_fraction_of_peak"] = row[f"{block_name}_gflops"] / peak
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    machine = bench_utils.machine_description()
    print(f"machine: {machine}; torch {torch.__version__} with {torch.get_num_threads()} threads")
    load_before = os.getloadavg()
    rows = [measure(side, args.batch, args.channels, args.repeats) for side in args.sizes]
    load_after = os.getloadavg()
    print(
        f"medians of {args.repeats} interleaved rounds; load average (1, 5, 15 min) before "
        f"{load_before}, after {load_after}"
    )
    bench_utils.print_table(
        [
            "positions",
            "dnl_jax auto (kernel) s",
            "dnl_jax xla s",
            "PyTorch s",
            "speed-up auto vs PyTorch (fastest rounds)",
            "dnl_jax auto GFLOP/s (% of JAX peak)",
            "PyTorch GFLOP/s (% of torch peak)",
            "max |Δ out|",
        ],
        [
            [
                f"{r['side']}x{r['side']} (B={r['batch']})",
                f"{r['jax_auto_s']:.3f} ({r['auto_implementation']})",
                f"{r['jax_xla_s']:.3f}",
                f"{r['torch_s']:.3f}",
                f"{r['speedup_auto_vs_torch']:.2f}x ({r['speedup_auto_vs_torch_min']:.2f}x)",
                f"{r['jax_auto_gflops']:.0f} ({r['jax_auto_fraction_of_peak']:.0%} of "
                f"{r['jax_matmul_peak_gflops']:.0f})",
                f"{r['torch_gflops']:.0f} ({r['torch_fraction_of_peak']:.0%} of "
                f"{r['torch_matmul_peak_gflops']:.0f})",
                f"{r['max_abs_diff_outputs']:.1e}",
            ]
            for r in rows
        ],
    )
    print(
        "saved",
        bench_utils.save_json(
            "block_vs_torch",
            dict(
                machine=machine,
                torch=torch.__version__,
                torch_threads=torch.get_num_threads(),
                channels=args.channels,
                repeats=args.repeats,
                load_average_before=load_before,
                load_average_after=load_after,
                rows=rows,
            ),
        ),
    )
    plot(rows, args.channels)


def plot(rows, channels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [f"{r['side']}x{r['side']}" for r in rows]
    positions = np.arange(len(rows))
    for offset, (key, label) in zip(
        (-0.25, 0, 0.25),
        (
            ("jax_auto_s", "dnl_jax auto"),
            ("jax_xla_s", "dnl_jax xla"),
            ("torch_s", "PyTorch (mmseg-style)"),
        ),
        strict=False,
    ):
        axis.bar(positions + offset, [r[key] for r in rows], width=0.25, label=label)
    axis.set(
        xticks=positions,
        xticklabels=labels,
        ylabel="median fwd+bwd seconds (lower is better)",
        title=f"DNL block, {channels} channels",
        yscale="log",
    )
    axis.legend()
    print("saved", bench_utils.save_figure("block_vs_torch", figure))


if __name__ == "__main__":
    main()
