"""`load_torch_checkpoint`: .pth / mmseg wrappers / safetensors, and refusal of unsafe pickles."""

import os

import numpy as np
import pytest
from torch_reference import require

from dnl_jax import interop

torch = require("torch")


def small_state_dict():
    generator = torch.Generator().manual_seed(0)
    return {
        "g.conv.weight": torch.randn(4, 8, 1, 1, generator=generator),
        "conv_out.bn.running_var": torch.rand(8, generator=generator),
        "conv_out.bn.num_batches_tracked": torch.tensor(7),
    }


def assert_same(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert isinstance(loaded[key], np.ndarray)
        np.testing.assert_array_equal(loaded[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_plain_state_dict(tmp_path, suffix):
    path = tmp_path / f"block{suffix}"
    torch.save(small_state_dict(), path)
    assert_same(interop.load_torch_checkpoint(path), small_state_dict())


def test_mmseg_wrapper_with_meta_and_optimizer(tmp_path):
    path = tmp_path / "dnl_r50.pth"
    torch.save(
        {
            "meta": {"mmseg_version": "0.x", "CLASSES": ("road", "sidewalk"), "iter": 80000},
            "state_dict": {f"module.{k}": v for k, v in small_state_dict().items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]},
        },
        path,
    )
    assert_same(interop.load_torch_checkpoint(path), small_state_dict())


def test_safetensors_and_bfloat16(tmp_path):
    safetensors_torch = require("safetensors.torch")
    path = tmp_path / "block.safetensors"
    safetensors_torch.save_file(small_state_dict(), str(path))
    assert_same(interop.load_torch_checkpoint(path), small_state_dict())
    bf16 = tmp_path / "bf16.pth"
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16)}, bf16)
    assert interop.load_torch_checkpoint(bf16)["w"].dtype == np.float32


class CodeRunningPayload:
    """Unpickling this calls `exec`, which writes a marker file: what an attack would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('executed')",)


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"g.conv.weight": torch.zeros(1), "payload": CodeRunningPayload(marker)}, path)
    with pytest.raises(ValueError, match="refused to load"):
        interop.load_torch_checkpoint(path)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it (so the check above can fail).
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        interop.load_torch_checkpoint(tmp_path / "absent.pth")
    npz = tmp_path / "weights.npz"
    np.savez(npz, w=np.zeros(2))
    with pytest.raises(ValueError, match="unknown checkpoint format '.npz'"):
        interop.load_torch_checkpoint(npz)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match="expected a mapping"):
        interop.load_torch_checkpoint(listing)
    nested = tmp_path / "nested.pth"
    torch.save({"weights": {"a": torch.zeros(1)}}, nested)
    with pytest.raises(ValueError, match="entry 'weights' is a dict"):
        interop.load_torch_checkpoint(nested)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        interop.load_torch_checkpoint(garbage)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(os.urandom(16))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        interop.load_torch_checkpoint(fake)
