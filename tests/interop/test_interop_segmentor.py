"""Whole mmseg segmentors and heads: mmseg's real `ResNetV1c` and decode heads (from the
mmsegmentation wheel, tests/openmmlab_reference.py) in our `EncoderDecoder` wrapper vs dnl_jax
after conversion; exact round trips; backbone partial loads; the parameter count of a real-size
R50-D8 DNLNet against mmseg's."""

import functools

import jax
import numpy as np
import pytest
from openmmlab_reference import mmseg_head, mmseg_resnet_v1c
from torch_reference import (
    EncoderDecoder,
    flax_output_and_input_grad,
    randomize,
    relative_error,
    require,
    torch_output_and_input_grad,
)

from dnl_jax import interop
from dnl_jax.interop import mapping, segmentor
from dnl_jax.models import heads

torch = require("torch")

# mmseg parameter counts (shared/DESIGN.md): ResNet-V1c-50 trunk + DNLHead(2048→512, 19 classes)
# + auxiliary FCNHead(1024→256).
MMSEG_DNLNET_R50_PARAMS = 23_527_264 + 24_132_372 + 2_364_691


def torch_segmentor(
    stage_blocks, bottleneck, width, channels, aux_channels, classes, head="dnl", seed=0, std=0.05
):
    """A random mmseg-style EncoderDecoder (eval mode); `width` = stem and base channels."""
    expansion = 4 if bottleneck else 1
    backbone = mmseg_resnet_v1c(stage_blocks, bottleneck, stem=width, base=width)
    decode = mmseg_head(
        width * 8 * expansion,
        channels,
        classes,
        in_index=3,
        context=None if head == "fcn" else head,
    )
    aux = mmseg_head(
        width * 4 * expansion, aux_channels, classes, num_convs=1, concat_input=False, in_index=2
    )
    return randomize(EncoderDecoder(backbone, decode, aux), seed=seed, std=std)


def images_and_cotangent(classes, seed=0, size=(33, 41)):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((1, 3, *size)).astype(np.float32),
        rng.standard_normal((1, classes, *size)).astype(np.float32),
    )


def test_real_size_r50_d8_dnlnet_parity():
    """Full-width mmseg DNLNet R50-D8 (19 classes): logits within 1e-4, input gradient too."""
    # std 0.02 ≈ Kaiming scale of the 3×3×512 convs: activations stay O(1) through 50 layers.
    model = torch_segmentor((3, 4, 6, 3), True, 64, 512, 256, 19, seed=0, std=0.02)
    state_dict = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == MMSEG_DNLNET_R50_PARAMS
    config = segmentor.segmentor_config(state_dict)
    assert config["backbone_depth"] == 50 and config["head"] == "dnl"
    assert (config["num_classes"], config["channels"], config["aux_channels"]) == (19, 512, 256)
    module, variables, report = segmentor.segmentor_to_flax(state_dict)
    assert report.ok and len(report.loaded) == len(jax.tree.leaves(variables))
    assert sum(p.size for p in jax.tree.leaves(variables["params"])) == MMSEG_DNLNET_R50_PARAMS

    x, cotangent = images_and_cotangent(19)
    out_torch, grad_torch = torch_output_and_input_grad(model, x, cotangent)
    apply = jax.jit(lambda images: module.apply(variables, images)["logits"])
    out_flax, grad_flax = flax_output_and_input_grad(apply, x, cotangent)
    assert np.std(out_torch) > 0.1  # Not a degenerate (constant) output.
    assert relative_error(out_flax, out_torch) < 1e-4
    assert relative_error(grad_flax, grad_torch) < 1e-4


HEAD_CASES = {
    "dnl": lambda: mmseg_head(24, 16, 5, context="dnl"),
    "nl": lambda: mmseg_head(24, 16, 5, context="nl"),
    "gc": lambda: mmseg_head(24, 16, 5, context="gc"),
    "fcn": lambda: mmseg_head(24, 16, 5),
    "aux_fcn": lambda: mmseg_head(24, 8, 5, num_convs=1, concat_input=False),
}
FLAX_HEADS = {
    "dnl": heads.DNLHead(num_classes=5, channels=16),
    "nl": heads.NLHead(num_classes=5, channels=16),
    "gc": heads.GCHead(num_classes=5, channels=16),
    "fcn": heads.FCNHead(num_classes=5, channels=16),
    "aux_fcn": heads.FCNHead(num_classes=5, channels=8, num_convs=1, concat_input=False),
}


@pytest.mark.parametrize("name", sorted(HEAD_CASES))
def test_head_parity(name):
    torch_head = randomize(HEAD_CASES[name](), seed=1)
    module = FLAX_HEADS[name]
    _, cotangent = images_and_cotangent(5, seed=2, size=(6, 7))
    x = np.random.default_rng(3).standard_normal((1, 24, 6, 7)).astype(np.float32)
    template = mapping.template_of(module, np.zeros((1, 6, 7, 24), np.float32))
    variables, _ = mapping.torch_to_flax(
        torch_head.state_dict(), template, rename=segmentor.mmseg_rename
    )
    # mmseg heads take the backbone's tuple of features (in_index -1 here).
    out_torch, grad_torch = torch_output_and_input_grad(lambda t: torch_head([t]), x, cotangent)
    out_flax, grad_flax = flax_output_and_input_grad(
        functools.partial(module.apply, variables), x, cotangent
    )
    assert relative_error(out_flax, out_torch) < 1e-5
    assert relative_error(grad_flax, grad_torch) < 1e-4


def test_checkpoint_file_to_segmentor_and_exact_round_trip(tmp_path):
    model = torch_segmentor((2, 2, 2, 2), False, 8, 16, 8, 3, head="nl", seed=4)
    path = tmp_path / "nlnet_r18.pth"
    torch.save({"meta": {"CLASSES": ("a", "b", "c")}, "state_dict": model.state_dict()}, path)
    state_dict = interop.load_torch_checkpoint(path)
    variables = interop.mmseg_to_flax(state_dict)
    module = segmentor.segmentor_for_state_dict(state_dict)
    assert module.backbone.depth == 18 and type(module.decode_head) is heads.NLHead
    x, _ = images_and_cotangent(3, size=(17, 19))
    with torch.no_grad():
        expected = model(torch.tensor(x)).numpy()
    logits = module.apply(variables, x.transpose(0, 2, 3, 1))["logits"]
    assert relative_error(np.asarray(logits).transpose(0, 3, 1, 2), expected) < 1e-4
    # flax → torch (strict load into the reference: same key set) → flax, bit for bit.
    model.load_state_dict(
        segmentor.flax_segmentor_to_torch_state_dict(variables, as_torch=True), strict=True
    )
    again = interop.mmseg_to_flax(model.state_dict())
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_pretrained_backbone_into_segmentor_needs_partial_load():
    torch_backbone = randomize(mmseg_resnet_v1c((2, 2, 2, 2), False, stem=8, base=8), seed=5)
    state_dict = dict(torch_backbone.state_dict())
    state_dict["fc.weight"] = torch.zeros(10, 64)  # ImageNet classifier: dropped.
    state_dict["fc.bias"] = torch.zeros(10)
    backbone, variables, report = segmentor.resnet_v1c_to_flax(state_dict)
    assert report.ok and backbone.depth == 18
    x = np.random.default_rng(6).standard_normal((1, 3, 21, 23)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in torch_backbone(torch.tensor(x))]
    features = backbone.apply(variables, x.transpose(0, 2, 3, 1))
    for got, want in zip(features, expected, strict=False):
        assert relative_error(np.asarray(got).transpose(0, 3, 1, 2), want) < 1e-5

    seg = segmentor.segmentor_for_state_dict(
        torch_segmentor((2, 2, 2, 2), False, 8, 16, 8, 4).state_dict()
    )
    seg_template = segmentor.segmentor_template(seg)
    prefixed = {f"backbone.{k}": v for k, v in state_dict.items() if not k.startswith("fc.")}
    with pytest.raises(interop.ConversionError, match="missing:    decode_head.conv_seg.weight"):
        mapping.torch_to_flax(prefixed, seg_template, rename=segmentor.mmseg_rename)
    partial, partial_report = mapping.torch_to_flax(
        prefixed, seg_template, rename=segmentor.mmseg_rename, strict=False
    )
    assert not partial_report.unexpected and not partial_report.mismatched
    assert all(
        key.startswith(("decode_head.", "auxiliary_head.")) for key, _ in partial_report.missing
    )
    fresh = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), seg_template)
    merged = interop.merge_variables(fresh, partial)
    jax.tree.map(np.testing.assert_array_equal, merged["params"]["backbone"], variables["params"])


def test_different_class_count_is_reported_as_mis_shaped():
    state_dict = torch_segmentor((2, 2, 2, 2), False, 8, 16, 8, 3).state_dict()
    module = segmentor.segmentor_for_state_dict(state_dict, num_classes=7)
    with pytest.raises(interop.ConversionError) as info:
        segmentor.segmentor_to_flax(state_dict, module)
    mismatched = {key for key, *_ in info.value.report.mismatched}
    assert mismatched == {
        "decode_head.conv_seg.weight",
        "decode_head.conv_seg.bias",
        "auxiliary_head.conv_seg.weight",
        "auxiliary_head.conv_seg.bias",
    }
    assert (
        "decode_head.conv_seg.weight: checkpoint (3, 16, 1, 1), model expects (7, 16, 1, 1)"
        in str(info.value)
    )


@pytest.mark.parametrize(
    "head, head_kwargs, head_type",
    [
        ("fcn", {"num_convs": 2, "concat_input": True}, heads.FCNHead),
        ("gc", {"ratio": 1 / 4}, heads.GCHead),
    ],
)
def test_fcn_and_gc_segmentor_architecture_is_read_from_keys(head, head_kwargs, head_type):
    state_dict = torch_segmentor((2, 2, 2, 2), False, 8, 16, 8, 6, head=head).state_dict()
    config = segmentor.segmentor_config(state_dict)
    assert config["head"] == head and config["head_kwargs"] == head_kwargs
    module, variables, report = segmentor.segmentor_to_flax(state_dict)
    assert report.ok and type(module.decode_head) is head_type
    assert variables["params"]["decode_head"]["conv_seg"]["kernel"].shape == (1, 1, 16, 6)
