"""Parity of bare blocks: mmcv's real `NonLocal2d` and `ContextBlock` (mmcv-lite) and mmseg's real
`DisentangledNonLocal2d` (from the mmsegmentation wheel, tests/openmmlab_reference.py) vs the
dnl_jax blocks after `mmseg_to_flax`; strict key reports; exact flax → torch → flax round trips."""

import jax
import numpy as np
import pytest
from openmmlab_reference import mmseg_dnl_block
from torch_reference import (
    flax_output_and_input_grad,
    randomize,
    relative_error,
    require,
    torch_output_and_input_grad,
)

from dnl_jax import interop
from dnl_jax.core import blocks

torch = require("torch")
mmcv_cnn = require("mmcv.cnn")

CHANNELS = 16


def mmcv_nonlocal(norm: bool, sub_sample: bool = False):
    norm_cfg = dict(type="BN") if norm else None
    return mmcv_cnn.NonLocal2d(CHANNELS, reduction=2, sub_sample=sub_sample, norm_cfg=norm_cfg)


TORCH_BLOCKS = {
    "mmcv_context_add": lambda: mmcv_cnn.ContextBlock(CHANNELS, 1 / 4),
    "mmcv_context_add_mul": lambda: mmcv_cnn.ContextBlock(
        CHANNELS, 3 / 16, fusion_types=("channel_add", "channel_mul")
    ),
    "mmcv_context_avg_mul": lambda: mmcv_cnn.ContextBlock(
        CHANNELS, 1 / 2, pooling_type="avg", fusion_types=("channel_mul",)
    ),
    "mmcv_nonlocal_bn": lambda: mmcv_nonlocal(norm=True),
    "mmcv_nonlocal_plain": lambda: mmcv_nonlocal(norm=False),
    "mmcv_nonlocal_subsample": lambda: mmcv_nonlocal(norm=True, sub_sample=True),
    "mmseg_dnl": lambda: mmseg_dnl_block(CHANNELS),
}
EXPECTED_MODULES = {
    "mmcv_context_add": blocks.ContextBlock(ratio=1 / 4),
    "mmcv_context_add_mul": blocks.ContextBlock(
        ratio=3 / 16, fusion_types=("channel_add", "channel_mul")
    ),
    "mmcv_context_avg_mul": blocks.ContextBlock(
        ratio=1 / 2, pooling="avg", fusion_types=("channel_mul",)
    ),
    "mmcv_nonlocal_bn": blocks.NonLocal(),
    "mmcv_nonlocal_plain": blocks.NonLocal(norm=None),
    "mmcv_nonlocal_subsample": blocks.NonLocal(sub_sample=True),
    "mmseg_dnl": blocks.DisentangledNonLocal(),
}


def random_inputs(seed: int, shape=(2, CHANNELS, 6, 7)):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


@pytest.mark.parametrize("name", sorted(TORCH_BLOCKS))
def test_block_parity_forward_and_input_gradient(name):
    torch_block = randomize(TORCH_BLOCKS[name](), seed=1)
    state_dict = torch_block.state_dict()
    module, channels = interop.block_for_state_dict(state_dict)
    assert module == EXPECTED_MODULES[name] and channels == CHANNELS
    variables = interop.mmseg_to_flax(state_dict)
    x, cotangent = random_inputs(seed=2)

    out_torch, grad_torch = torch_output_and_input_grad(torch_block, x, cotangent)
    out_flax, grad_flax = flax_output_and_input_grad(
        lambda x_nhwc: module.apply(variables, x_nhwc), x, cotangent
    )
    # The residual branch must carry signal, else parity would only test the skip connection.
    assert relative_error(out_torch, x) > 0.1
    assert relative_error(out_flax, out_torch) < 1e-5
    assert relative_error(grad_flax, grad_torch) < 1e-4


@pytest.mark.parametrize("name", sorted(TORCH_BLOCKS))
def test_round_trips_are_exact(name):
    torch_block = randomize(TORCH_BLOCKS[name](), seed=3)
    module = EXPECTED_MODULES[name]
    # torch → flax → torch: every key and value comes back unchanged.
    state_dict = {k: v.numpy() for k, v in torch_block.state_dict().items()}
    back = interop.flax_block_to_torch_state_dict(module, interop.mmseg_to_flax(state_dict))
    assert sorted(back) == sorted(state_dict)
    for key, value in state_dict.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value, err_msg=key)
    # flax → torch → flax from Flax-initialised weights, through the real torch module.
    x = np.ones((1, 4, 4, CHANNELS), np.float32)
    variables = jax.tree.map(np.asarray, module.init(jax.random.key(4), x))
    variables = jax.tree.map(
        lambda v: v + np.random.default_rng(5).random(v.shape, v.dtype), variables
    )
    torch_block.load_state_dict(
        interop.flax_block_to_torch_state_dict(module, variables, as_torch=True), strict=True
    )
    again = interop.mmseg_to_flax(torch_block.state_dict())
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def dnl_state_dict():
    return {k: v.numpy() for k, v in randomize(mmseg_dnl_block(CHANNELS)).state_dict().items()}


def test_strict_report_names_every_mismatch():
    state_dict = dnl_state_dict()
    del state_dict["conv_mask.bias"]
    state_dict["theta.conv.weight"] = np.zeros((4, CHANNELS, 1, 1), np.float32)
    state_dict["decoder.extra.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(interop.ConversionError) as info:
        interop.mmseg_to_flax(state_dict)
    message = str(info.value)
    assert "missing:    conv_mask.bias  (for Flax params/conv_mask/bias)" in message
    assert "unexpected: decoder.extra.weight" in message
    assert (
        "mis-shaped: theta.conv.weight: checkpoint (4, 16, 1, 1), model expects (8, 16, 1, 1)"
        in message
    )
    assert "strict=False" in message
    report = info.value.report
    assert not report.ok
    assert [key for key, *_ in report.mismatched] == ["theta.conv.weight"]


def test_partial_load_returns_loaded_leaves_and_report():
    state_dict = dnl_state_dict()
    del state_dict["conv_mask.weight"], state_dict["conv_mask.bias"]  # Now reads as a NonLocal.
    state_dict["conv_out.bn.weight"] = np.ones((3,), np.float32)
    module = blocks.DisentangledNonLocal()
    x = np.ones((1, 4, 4, CHANNELS), np.float32)
    template = interop.mapping.template_of(module, x)
    partial, report = interop.torch_to_flax(state_dict, template, strict=False)
    assert {key for key, _ in report.missing} == {"conv_mask.weight", "conv_mask.bias"}
    assert [key for key, *_ in report.mismatched] == ["conv_out.bn.weight"]
    assert (
        "conv_mask" not in partial["params"] and "scale" not in partial["params"]["conv_out"]["bn"]
    )
    np.testing.assert_array_equal(partial["params"]["g"]["conv"]["bias"], state_dict["g.conv.bias"])
    merged = interop.merge_variables(module.init(jax.random.key(0), x), partial)
    assert np.isfinite(np.asarray(module.apply(merged, x))).all()


def test_mmseg_to_flax_partial_signature_and_non_block_input():
    state_dict = dnl_state_dict()
    state_dict["unrelated.weight"] = np.zeros((2,), np.float32)
    variables, report = interop.mmseg_to_flax(state_dict, strict=False)
    assert report.unexpected == ("unrelated.weight",) and not report.missing
    assert "conv_mask" in variables["params"]
    with pytest.raises(ValueError, match="not a non-local block state_dict"):
        interop.mmseg_to_flax({"fc.weight": np.zeros((2, 2), np.float32)})


def test_strip_prefix_takes_a_block_out_of_a_head():
    inner = dnl_state_dict()
    head = {f"decode_head.dnl_block.{k}": v for k, v in inner.items()}
    head["decode_head.conv_seg.weight"] = np.zeros((2, 4, 1, 1), np.float32)
    block = interop.strip_prefix(head, "decode_head.dnl_block")
    assert sorted(block) == sorted(inner)
    with pytest.raises(ValueError, match="no key starts with"):
        interop.strip_prefix(head, "auxiliary_head.")
