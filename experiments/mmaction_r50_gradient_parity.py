"""Full-width mmaction2 I3D NL R50: input gradients of dnl_jax vs mmaction2's own code (too slow
for the CI suite, which checks them at the same architecture with narrower widths, and the
full-width features and logits).

    PYTHONPATH=. python experiments/mmaction_r50_gradient_parity.py [--out experiments/results]

Builds the reference exactly as tests/interop/test_interop_mmaction.py does (random weights and
batch-norm statistics, calibrated NL blocks, eval mode; one 16×64×64 clip, 400 classes), converts it
with `dnl_jax.interop.mmaction`, and prints and saves (JSON) the relative errors of backbone
features, logits and the input gradient, max |a − b| / max |b|.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
sys.path[:0] = [_TESTS, os.path.join(_TESTS, "interop")]  # the helpers, the mmaction tests

import test_interop_mmaction as reference  # noqa: E402  (the tests' reference builders)
from torch_reference import relative_error, torch  # noqa: E402

from dnl_jax.interop import mmaction  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    start = time.time()
    model = reference.mmaction_recognizer(classes=400)
    module, variables, report = mmaction.mmaction_to_flax(model.state_dict())
    clips, cotangent = reference.clip_and_cotangent(400)
    x = torch.tensor(clips, requires_grad=True)
    features = model.backbone(x)
    logits = model.cls_head(features)
    (logits * torch.tensor(cotangent)).sum().backward()

    def logits_and_features(variables, channel_last):
        outputs, state = module.apply(
            variables, channel_last, capture_intermediates=lambda m, _: m.name == "backbone"
        )
        return outputs["logits"], state["intermediates"]["backbone"]["__call__"][0]

    @jax.jit
    def with_input_gradient(variables, clips, cotangent):
        out, vjp, aux = jax.vjp(lambda c: logits_and_features(variables, c), clips, has_aux=True)
        return out, aux, vjp(cotangent)[0]

    flax_logits, flax_features, grad = with_input_gradient(
        variables, clips.transpose(0, 2, 3, 4, 1), cotangent
    )
    errors = {
        "features": relative_error(
            np.asarray(flax_features).transpose(0, 4, 1, 2, 3), features.detach().numpy()
        ),
        "logits": relative_error(np.asarray(flax_logits), logits.detach().numpy()),
        "input_gradient": relative_error(np.asarray(grad).transpose(0, 4, 1, 2, 3), x.grad.numpy()),
    }
    result = {
        "relative_errors": errors,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "key_report_ok": report.ok,
        "clip": list(clips.shape),
        "seconds": round(time.time() - start, 1),
    }
    for name, value in errors.items():
        print(f"{name:>15}: relative error {value:.2e} (bound 1e-4)")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "mmaction_r50_gradient_parity.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    print(f"wrote {path} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
