"""bfloat16 accuracy of every attention kernel against the floor that bfloat16 inputs set.

    python experiments/benchmarks/bf16_accuracy.py [--n 1023,1024,4096] [--temperatures 0.05,1]
        [--kernels xla,chunked,pallas_tpu,pallas_gpu] [--out FILE.json]

For `attention.dnl_attention(q, k, v, unary, temperature=T)` (whitened pairwise term + unary
term) and a random cotangent g, the quantities are out and the gradients of Σ g·out w.r.t.
q, k, v and unary. Each error is max |a − ref| / max |ref| over all entries, where

- ref: the exact computation, float64 on the host ('xla' under `jax.enable_x64`), on the
  float32 inputs;
- floor: what a bfloat16 interface alone costs: the exact computation on q, k, v, unary rounded
  to bfloat16 and on the cotangent rounded to bfloat16 (JAX hands a bfloat16 output its
  cotangent in bfloat16), with the results rounded to bfloat16. No bfloat16 kernel can beat it;
- input floor: the same without the cotangent and result roundings (rounding the inputs alone).
  Where it is below bfloat16's unit roundoff (2⁻⁸ ≈ 3.9e-3), e.g. dv and dunary at T = 1, even
  the exact computation with bfloat16 results misses twice it, so the bound uses the floor;
- a kernel: the kernel in bfloat16 on the rounded inputs (float32 cotangent, rounded by the
  cast's transpose as in any bfloat16 model).

The requirement (FlashAttention's criterion) is error <= 2 × floor, per quantity. Off their
platforms the Pallas kernels run in interpret mode (exact semantics, slow), with big blocks.

`--diagnose` adds a float64 emulation that applies one bfloat16 rounding at a time (the whitened
operands, the softmax weights P before P·V, the output) to attribute a kernel's excess over the
floor to its source. Prints Markdown tables; `--out` saves the rows as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from dnl_jax.core import attention  # noqa: E402
from dnl_jax.core.attention import chunked  # noqa: E402
from dnl_jax.core.attention import pallas as pallas_attention  # noqa: E402

QUANTITIES = ("out", "dq", "dk", "dv", "dunary")
BOUND = 2.0  # error <= BOUND × floor
# Interpret mode runs one grid step at a time: big blocks keep N = 4096 to seconds on a CPU.
INTERPRET_BLOCK = 2048


def make_inputs(batch: int, n: int, channels: int, seed: int = 0) -> list[np.ndarray]:
    """float32 q, k, v `[B, N, C]`, unary `[B, N]` and a cotangent `[B, N, C]` (numpy)."""
    rng = np.random.default_rng(seed)
    shapes = [(batch, n, channels)] * 3 + [(batch, n), (batch, n, channels)]
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def round_bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))


def outputs_and_grads(
    implementation: str, q, k, v, unary, cotangent, temperature: float, whiten: bool = True
) -> list[np.ndarray]:
    """(out, dq, dk, dv, dunary) of Σ cotangent · dnl_attention(...) as float64 numpy."""

    def weighted(q, k, v, unary):
        out = attention.dnl_attention(
            q, k, v, unary, temperature=temperature, whiten=whiten, implementation=implementation
        )
        return jnp.sum(out.astype(cotangent.dtype) * cotangent), out

    with _interpret_blocks():
        grad_fn = jax.jit(jax.grad(weighted, argnums=(0, 1, 2, 3), has_aux=True))
        grads, out = grad_fn(q, k, v, unary)
    return [np.asarray(x, np.float64) for x in (out, *grads)]


@contextlib.contextmanager
def _interpret_blocks():
    """Big blocks on CPU, where the Pallas kernels are interpreted; the defaults elsewhere."""
    if jax.default_backend() != "cpu":
        yield
        return
    with (
        chunked.block_sizes_override(1024, 512),
        pallas_attention.block_size_override(INTERPRET_BLOCK),
    ):
        yield


def exact(inputs, temperature: float, whiten: bool = True) -> list[np.ndarray]:
    """The float64 reference on the given (float32) inputs, computed on the host CPU."""
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        args = [jnp.asarray(x, jnp.float64) for x in inputs]
        return outputs_and_grads("xla", *args, temperature, whiten)


def in_bf16(implementation: str, inputs, temperature: float, whiten: bool = True):
    """The kernel in bfloat16 on the rounded inputs, float32 cotangent."""
    *operands, cotangent = inputs
    args = [jnp.asarray(x).astype(jnp.bfloat16) for x in operands]
    return outputs_and_grads(implementation, *args, jnp.asarray(cotangent), temperature, whiten)


def relative_errors(results, reference) -> list[float]:
    """max |a − b| / max |b| for each quantity."""
    return [
        float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
        for a, b in zip(results, reference, strict=False)
    ]


def floor_and_reference(inputs, temperature: float, whiten: bool = True):
    """(reference on the float32 inputs, floor errors, input-floor errors); see the module doc."""
    reference = exact(inputs, temperature, whiten)
    rounded_inputs = exact([round_bf16(x) for x in inputs[:4]] + [inputs[4]], temperature, whiten)
    rounded_all = exact([round_bf16(x) for x in inputs], temperature, whiten)
    floor = relative_errors([round_bf16(x) for x in rounded_all], reference)
    return reference, floor, relative_errors(rounded_inputs, reference)


def kernel_row(
    kernel, inputs, reference, floor, input_floor, temperature: float, whiten: bool = True
) -> dict:
    """One kernel's errors, error / floor and error / input floor, per quantity."""
    start = time.perf_counter()
    errors = relative_errors(in_bf16(kernel, inputs, temperature, whiten), reference)
    ratios = [e / f for e, f in zip(errors, floor, strict=False)]
    return {
        "kernel": kernel,
        "n": inputs[0].shape[1],
        "temperature": temperature,
        "batch": inputs[0].shape[0],
        "channels": inputs[0].shape[2],
        "floor": floor,
        "input_floor": input_floor,
        "errors": errors,
        "ratios": ratios,
        "ratios_to_input_floor": [e / f for e, f in zip(errors, input_floor, strict=False)],
        "within_bound": all(r <= BOUND for r in ratios),
        "seconds": round(time.perf_counter() - start, 2),
    }


def measure(
    kernels,
    n: int,
    temperature: float,
    batch: int = 2,
    channels: int = 64,
    seed: int = 0,
    whiten: bool = True,
) -> list[dict]:
    """`kernel_row` for each kernel (None = automatic choice) on one set of inputs."""
    inputs = make_inputs(batch, n, channels, seed)
    reference, floor, input_floor = floor_and_reference(inputs, temperature, whiten)
    return [
        kernel_row(kernel, inputs, reference, floor, input_floor, temperature, whiten)
        for kernel in kernels
    ]


# ----------------------------------------------------------------------------------------------
# Diagnosis: where a kernel's excess over the floor comes from (float64 emulation, output only).
# ----------------------------------------------------------------------------------------------


def _emulated_output(q, k, v, scale, round_q=False, round_k=False, round_p=False, round_out=False):
    """Whitened attention in float64 with chosen bfloat16 roundings (no unary term): of the
    whitened, scaled queries and of the whitened keys (the kernels' matmul operands), of P
    before P·V, of the output."""
    q = q - q.mean(1, keepdims=True)
    if round_q:
        q = round_bf16(q * scale).astype(np.float64) / scale
    # Unwhitened keys give the same softmax: q̂ᵢᵀμ_k is constant over j.
    k = k - k.mean(1, keepdims=True) if round_k else k
    if round_k:
        k = round_bf16(k).astype(np.float64)
    logits = scale * np.einsum("bnc,bmc->bnm", q, k)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    total = p.sum(-1, keepdims=True)
    if round_p:  # P cast to bfloat16 before P·V
        p = round_bf16(p).astype(np.float64)
    out = np.einsum("bnm,bmc->bnc", p, v) / total
    return round_bf16(out).astype(np.float64) if round_out else out


DIAGNOSIS = {
    "q̂·scale rounded": dict(round_q=True),
    "k̂ rounded": dict(round_k=True),
    "P rounded before P·V": dict(round_p=True),
    "output rounded": dict(round_out=True),
    "all, k raw (now)": dict(round_q=True, round_p=True, round_out=True),
    "all, k̂ rounded (before)": dict(round_q=True, round_k=True, round_p=True, round_out=True),
}


def diagnose(n: int, temperature: float, batch: int = 2, channels: int = 64, seed: int = 0) -> dict:
    """Output error / floor for each rounding alone (on top of the rounded inputs)."""
    q, k, v = (x.astype(np.float64) for x in make_inputs(batch, n, channels, seed)[:3])
    scale = channels**-0.5 / temperature
    reference = _emulated_output(q, k, v, scale)
    rounded = [round_bf16(x).astype(np.float64) for x in (q, k, v)]
    floor = relative_errors([_emulated_output(*rounded, scale)], [reference])[0]
    row = {"n": n, "temperature": temperature, "floor": floor}
    for name, options in DIAGNOSIS.items():
        error = relative_errors([_emulated_output(*rounded, scale, **options)], [reference])[0]
        row[name] = error / floor
    return row


# ----------------------------------------------------------------------------------------------
# Tables and command line.
# ----------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = [
        "| N | T | kernel | floor out / dq / dk / dv / dunary | error out / dq / dk / dv / "
        "dunary | error / floor (max) | error / input floor (max) | within 2× floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['temperature']} | {r['kernel'] or 'auto'} | "
            + " / ".join(f"{x:.2e}" for x in r["floor"])
            + " | "
            + " / ".join(f"{x:.2e}" for x in r["errors"])
            + f" | {max(r['ratios']):.2f} | {max(r['ratios_to_input_floor']):.2f} | "
            f"{r['within_bound']} |"
        )
    return "\n".join(lines)


def diagnosis_table(rows: list[dict]) -> str:
    names = list(DIAGNOSIS)
    lines = [
        "| N | T | floor (out) | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['temperature']} | {r['floor']:.2e} | "
            + " | ".join(f"{r[name]:.2f}×" for name in names)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", default="1023,1024,4096")
    parser.add_argument("--temperatures", default="0.05,1")
    parser.add_argument("--kernels", default="xla,chunked,pallas_tpu,pallas_gpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    rows, diagnosis = [], []
    for n in (int(x) for x in args.n.split(",")):
        for temperature in (float(t) for t in args.temperatures.split(",")):
            rows += measure(kernels, n, temperature, args.batch, args.channels)
            print(table(rows[-len(kernels) :]).split("\n", 2)[2], flush=True)
            if args.diagnose:
                diagnosis.append(diagnose(n, temperature, args.batch, args.channels))
    print(
        f"\nbf16 error against the float64 reference, B={args.batch}, C=Cv={args.channels}, "
        f"platform {jax.default_backend()}:\n\n{table(rows)}"
    )
    if diagnosis:
        print(
            f"\nOutput error / floor, one rounding at a time (float64 emulation):\n\n"
            f"{diagnosis_table(diagnosis)}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"platform": jax.default_backend(), "rows": rows, "diagnosis": diagnosis},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
