"""The mmdetection v1 layout (the official DNL detection checkpoints) of the mmdet Mask R-CNN of
tests/interop/mmdet_detector.py: made here by renaming and re-ordering the classes of the v3
state_dict, it must convert to the same variables; the official `nl_gc_block`s map onto our
'dnl_official' block and compute what the official forward computes; In-Place ABN (the
official SyncABN) is checked with a stand-in for its layer written from inplace_abn's formula."""

import copy

import jax
import numpy as np
import pytest
from mmdet_detector import BASE, FPN, nhwc, state_dict_of, to_v1
from torch_reference import OfficialReference, relative_error, require

from dnl_jax.core.blocks_official import OFFICIAL_VARIANTS, OfficialDisentangledNonLocal
from dnl_jax.interop import mmdet

torch = require("torch")


@pytest.mark.parametrize("case", ["two_fc", "four_conv_gc"])
def test_v1_layout_converts_to_the_same_variables(case, request):
    reference, module, variables, _ = request.getfixturevalue(case)
    v1 = to_v1(state_dict_of(reference))
    assert mmdet.detect_layout(v1) == "mmdet_v1"
    module_v1, variables_v1, report = mmdet.mmdet_to_flax(v1)
    assert report.ok
    jax.tree.map(np.testing.assert_array_equal, variables_v1, variables)
    assert module_v1.num_classes == module.num_classes
    if module.context is not None:  # v1 puts its blocks after the residual add
        assert module_v1.context.placement == "after_add"


def test_v1_official_dnl_blocks_map_onto_our_block(two_fc):
    """`nl_gc_block` (the official DNL detection code's `NonLocal2dGc`, ratio 1/4, in c4 block
    n−2 and all of c5, as its `stage_with_nlgcb=[[], [], [-2], [-2, -1, 0]]`) → our
    'dnl_official' block: leaf by leaf, and the converted block computes what the official
    forward (tests/core/test_blocks_official.py's reference, which NonLocal2dGc with
    downsample=False, use_out=False, with_gc=True is) computes with the checkpoint's tensors."""
    reference, _, _, _ = two_fc
    v1 = to_v1(state_dict_of(reference))
    rng = np.random.default_rng(3)
    blocks = {
        "layer3.4": BASE * 16,
        "layer4.0": BASE * 32,
        "layer4.1": BASE * 32,
        "layer4.2": BASE * 32,
    }
    for name, channels in blocks.items():
        inner = channels // 4
        prefix = f"backbone.{name}.nl_gc_block."
        shapes = {
            "conv_query.weight": (inner, channels, 1, 1),
            "conv_query.bias": (inner,),
            "conv_key.weight": (inner, channels, 1, 1),
            "conv_key.bias": (inner,),
            "conv_value.weight": (channels, channels, 1, 1),
            "conv_mask.weight": (1, channels, 1, 1),
            "conv_mask.bias": (1,),
            "gamma": (1,),
        }
        v1.update(
            {
                prefix + k: (rng.normal(size=s) * (1.0 if k == "gamma" else 0.05)).astype(
                    np.float32
                )
                for k, s in shapes.items()
            }
        )
    module, variables, report = mmdet.mmdet_to_flax(v1, temperature=0.05)
    assert report.ok
    assert (
        module.context.kind,
        module.context.placement,
        module.context.reduction,
        module.context.temperature,
    ) == ("dnl_official", "after_add", 4, 0.05)
    assert module.context_block_indices == ((), (), (4,), (0, 1, 2))
    block = variables["params"]["backbone"]["layer3_4"]["dnl_official_block"]
    prefix = "backbone.layer3.4.nl_gc_block."
    np.testing.assert_array_equal(block["gamma"], v1[prefix + "gamma"])
    np.testing.assert_array_equal(
        block["conv_value"]["kernel"], v1[prefix + "conv_value.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(block["conv_mask"]["bias"], v1[prefix + "conv_mask.bias"])

    channels = blocks["layer3.4"]
    official = OfficialReference(channels, channels // 4, **OFFICIAL_VARIANTS["in"])
    official.load_state_dict(
        {
            key.removeprefix(prefix): torch.tensor(value)
            for key, value in v1.items()
            if key.startswith(prefix)
        }
    )
    x = np.random.default_rng(4).normal(size=(2, channels, 5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = official(torch.tensor(x))
    ours = OfficialDisentangledNonLocal(reduction=4, **OFFICIAL_VARIANTS["in"]).apply(
        {"params": block}, nhwc(x)
    )
    assert relative_error(np.asarray(ours), nhwc(expected)) < 1e-4


class InPlaceABNStandIn(torch.nn.Module):
    """mapillary inplace_abn 1.0.x's `InPlaceABNSync(C, activation='identity')` in eval mode, as
    its forward computes it: batch norm with scale |weight| + eps; its state_dict has weight,
    bias, running_mean and running_var (no num_batches_tracked)."""

    def __init__(self, bn, rng):
        super().__init__()
        sign = np.where(rng.random(bn.weight.shape[0]) < 0.5, -1.0, 1.0).astype(np.float32)
        self.weight = torch.nn.Parameter(bn.weight.detach() * torch.tensor(sign))
        self.bias = torch.nn.Parameter(bn.bias.detach().clone())
        self.register_buffer("running_mean", bn.running_mean.clone())
        self.register_buffer("running_var", bn.running_var.clone())
        self.eps = 1e-5

    def forward(self, x):
        scale = (self.weight.abs() + self.eps) / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def test_v1_inplace_abn_norms_convert_to_their_function(four_conv_gc):
    """The official configs' SyncABN in the FPN and the mask head (weights of both signs): the
    layers without num_batches_tracked are found as ABN, and the converted FPN and mask head
    compute what the ABN layers compute; taken as plain BN (abn=False) they would not."""
    reference, _, _, _ = four_conv_gc
    abn = copy.deepcopy(reference)
    rng = np.random.default_rng(11)
    convs = [*abn.neck.lateral_convs, *abn.neck.fpn_convs, *abn.roi_head.mask_head.convs]
    for conv_module in convs:
        conv_module.bn = InPlaceABNStandIn(conv_module.bn, rng)
    v1 = to_v1(state_dict_of(abn))
    expected_abn = sorted(
        [f"neck.{kind}.{i}.bn" for kind in ("lateral_convs", "fpn_convs") for i in range(4)]
        + [f"mask_head.convs.{i}.bn" for i in range(4)]
    )
    assert mmdet.abn_norm_layers(v1, "mmdet_v1") == expected_abn
    module, variables, report = mmdet.mmdet_to_flax(v1)
    assert report.ok and module.neck_norm == module.mask_norm == "batch"
    _, plain, _ = mmdet.mmdet_to_flax(v1, abn=False)

    image = np.random.default_rng(2).normal(size=(1, 3, 64, 64)).astype(np.float32)
    features = np.random.default_rng(5).normal(size=(3, FPN, 14, 14)).astype(np.float32)
    with torch.no_grad():
        inputs = abn.backbone(torch.tensor(image))
        expected = abn.neck(inputs) + (abn.roi_head.mask_head(torch.tensor(features)),)

    def apply(variables_):
        return [
            np.asarray(out)
            for out in module.apply(
                variables_,
                [nhwc(x) for x in inputs],
                nhwc(features),
                method=lambda m, levels, rois: (*m.neck(levels), m.mask_head(rois)),
            )
        ]

    for ours, theirs in zip(apply(variables), expected, strict=False):
        assert relative_error(ours, nhwc(theirs)) < 1e-4
    assert relative_error(apply(plain)[-1], nhwc(expected[-1])) > 0.1
