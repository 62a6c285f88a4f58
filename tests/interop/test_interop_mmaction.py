"""mmaction2 video recognisers vs dnl_jax: the real `ResNet3d` (+ mmcv `NonLocal3d`) and `I3DHead`
from the mmaction2 1.2.0 wheel (tests/openmmlab_reference.py), converted with
`dnl_jax.interop.mmaction` / `python -m dnl_jax.cli.convert --model auto`.

Random weights and batch-norm statistics, eval mode, small clips: backbone features, logits and
input gradients within 1e-4 relative; exact Flax → PyTorch → Flax round trips; both time layouts
('mmaction', 'paper') and both NL scalings / modes against the reference built the same way."""

import json

import jax
import numpy as np
import pytest
from openmmlab_reference import mmaction_models, package_root
from torch_reference import randomize, relative_error, require
from train_testing import restore

from dnl_jax import interop
from dnl_jax.interop import convert, mmaction

torch = require("torch")
MMACTION = mmaction_models()

# mmaction2's configs/_base_/models/i3d_r50.py and its NL configs (res3 blocks 1, 3; res4 1, 3, 5).
I3D_INFLATE = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
NL_BLOCKS = ((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0))
# Its I3D NL R50 with the 400-class head (counted with mmaction2's classes).
MMACTION_I3D_NL_R50_PARAMS = 35_397_840


class Recognizer(torch.nn.Module):
    """mmaction2 `Recognizer3D`'s key layout and test-time forward for one clip:
    `cls_head(backbone(x))`. Ours, because the real Recognizer3D is built through the registry
    with a data preprocessor and runs its test loop on `ActionDataSample`s, not a tensor."""

    def __init__(self, backbone, cls_head):
        super().__init__()
        self.backbone, self.cls_head = backbone, cls_head

    def forward(self, clips):
        return self.cls_head(self.backbone(clips))


def mmaction_recognizer(
    *,
    base=64,
    classes=400,
    inflation="i3d",
    nl_mode="embedded_gaussian",
    use_scale=False,
    layout="mmaction",
    seed=0,
):
    """The real mmaction2 ResNet3d R50 + I3DHead, as its I3D/C2D NL configs build them."""
    i3d = inflation == "i3d"
    strides = 2 if layout == "mmaction" else 1
    backbone = MMACTION.ResNet3d(
        depth=50,
        pretrained2d=False,
        base_channels=base,
        conv1_kernel=(5 if i3d else 1, 7, 7),
        conv1_stride_t=strides,
        pool1_stride_t=strides,
        inflate=I3D_INFLATE if i3d else 0,
        non_local=NL_BLOCKS,
        non_local_cfg=dict(
            sub_sample=True,
            use_scale=use_scale,
            norm_cfg=dict(type="BN3d", requires_grad=True),
            mode=nl_mode,
        ),
    )
    if layout == "paper":  # The paper's pool after res2: 3×1×1, stride 2, padding 1.
        backbone.pool2 = torch.nn.MaxPool3d((3, 1, 1), (2, 1, 1), (1, 0, 0))
    model = randomize(
        Recognizer(backbone, MMACTION.I3DHead(classes, base * 32)), seed=seed, fan_in_weights=True
    )
    calm_non_local_blocks(model, clip_and_cotangent(classes)[0])
    return model


@torch.no_grad()
def calm_non_local_blocks(model, clips):
    """Scales each NL block's theta and phi so that its pairwise logits are O(1) on `clips`, as in
    trained blocks. Random ones give one-hot softmaxes, or in dot-product mode activations that
    grow as the cube per block until they overflow. One pass: a forward pre-hook rescales each
    block on its real input before the next block sees its output."""

    def rescale(block, inputs):
        factor = 1 / (float(inputs[0].std()) * block.inter_channels**0.25)
        for projection in (block.theta, block.phi):
            for weight in projection.parameters():
                weight.mul_(factor)

    hooks = [
        module.register_forward_pre_hook(rescale)
        for name, module in model.named_modules()
        if name.endswith("non_local_block")
    ]
    model(torch.tensor(clips))
    for hook in hooks:
        hook.remove()


def clip_and_cotangent(classes, shape=(1, 3, 16, 64, 64), seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal((shape[0], classes)).astype(np.float32),
    )


def assert_parity(model, module, variables, clips, cotangent, grads=True):
    """Backbone features, logits (and input gradients) of torch `model` vs the Flax `module`."""
    x = torch.tensor(clips, requires_grad=True)
    features = model.backbone(x)
    logits = model.cls_head(features)
    (logits * torch.tensor(cotangent)).sum().backward()
    np_features = features.detach().numpy()
    assert np_features.shape[2] >= 2  # Time survives to res5: the NL blocks mix frames.
    assert np.std(logits.detach().numpy()) > 0.1  # Not a degenerate (constant) output.

    def logits_and_features(variables, channel_last):
        outputs, state = module.apply(
            variables, channel_last, capture_intermediates=lambda m, _: m.name == "backbone"
        )
        return outputs["logits"], state["intermediates"]["backbone"]["__call__"][0]

    @jax.jit  # Variables as arguments, not constants: XLA would constant-fold the network.
    def with_input_gradient(variables, clips, cotangent):
        out, vjp, aux = jax.vjp(lambda c: logits_and_features(variables, c), clips, has_aux=True)
        return out, aux, vjp(cotangent)[0]

    channel_last = clips.transpose(0, 2, 3, 4, 1)
    if grads:  # One compiled forward + backward gives all three.
        flax_logits, flax_features, grad = with_input_gradient(variables, channel_last, cotangent)
        assert relative_error(np.asarray(grad).transpose(0, 4, 1, 2, 3), x.grad.numpy()) < 1e-4
    else:
        flax_logits, flax_features = jax.jit(logits_and_features)(variables, channel_last)
    assert relative_error(np.asarray(flax_features).transpose(0, 4, 1, 2, 3), np_features) < 1e-4
    assert relative_error(np.asarray(flax_logits), logits.detach().numpy()) < 1e-4
    return np.asarray(flax_logits)


@pytest.fixture(scope="module")
def i3d_nl_r50_checkpoint(tmp_path_factory):
    """A real-size random mmaction2 I3D NL (embedded Gaussian) R50 recogniser, saved as mmengine
    does (`{'meta', 'state_dict'}`)."""
    model = mmaction_recognizer(classes=400)
    path = tmp_path_factory.mktemp("mmaction") / "i3d_nl_r50.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, path)
    return model, path


def test_real_size_i3d_nl_r50_converts_with_auto_and_matches(
    i3d_nl_r50_checkpoint, tmp_path, capsys
):
    model, path = i3d_nl_r50_checkpoint
    assert sum(p.numel() for p in model.parameters()) == MMACTION_I3D_NL_R50_PARAMS
    assert convert.main([str(path), str(tmp_path / "out"), "--model", "auto"]) == 0
    assert "missing 0, unexpected 0, mis-shaped 0" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert summary["num_classes"] == 400 and summary["video_layout"]["use_scale"] is False
    variables = restore(tmp_path / "out" / "state")
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == MMACTION_I3D_NL_R50_PARAMS
    module = mmaction.recognizer_for_state_dict(interop.load_torch_checkpoint(path))
    assert module.backbone.depth == 50 and module.backbone.inflation == "i3d"
    assert module.backbone.context.kind == "nl" and module.backbone.context.use_scale is False
    clips, cotangent = clip_and_cotangent(400)
    # Input gradients are checked at this architecture with narrower widths (next test): at full
    # width the compiled backward alone takes minutes on a 2-core CI machine.
    assert_parity(model, module, variables, clips, cotangent, grads=False)


@pytest.mark.parametrize(
    "inflation, nl_mode, use_scale, layout",
    [
        ("i3d", "dot_product", False, "mmaction"),
        ("c2d", "embedded_gaussian", True, "paper"),
    ],
)
def test_modes_scales_and_layouts_match_mmaction(inflation, nl_mode, use_scale, layout):
    """The settings not stored in weights, each side of every switch: NL mode, `use_scale`, the
    time layout; C2D as mmaction2's ResNet3d with no inflation and a 1×7×7 stem."""
    model = mmaction_recognizer(
        base=8,
        classes=7,
        inflation=inflation,
        nl_mode=nl_mode,
        use_scale=use_scale,
        layout=layout,
        seed=1,
    )
    module, variables, report = mmaction.mmaction_to_flax(
        model.state_dict(), layout=layout, nl_mode=nl_mode, use_scale=use_scale
    )
    assert report.ok and module.backbone.inflation == inflation
    clips, cotangent = clip_and_cotangent(7, shape=(2, 3, 16, 64, 64), seed=2)
    logits = assert_parity(model, module, variables, clips, cotangent, grads=layout == "mmaction")
    # The switches matter: the other setting gives other logits on the same weights.
    other = mmaction.recognizer_for_state_dict(
        model.state_dict(),
        layout="paper" if layout == "mmaction" else "mmaction",
        nl_mode=nl_mode,
        use_scale=not use_scale,
    )
    other_logits = jax.jit(other.apply)(variables, clips.transpose(0, 2, 3, 4, 1))["logits"]
    assert relative_error(np.asarray(other_logits), logits) > 1e-2


def test_round_trip_flax_to_mmaction_to_flax_is_exact():
    model = mmaction_recognizer(base=8, classes=5, seed=3)
    module, _, _ = mmaction.mmaction_to_flax(model.state_dict())
    rng = np.random.default_rng(5)  # Any Flax variables of the module's shapes.
    variables = jax.tree.map(
        lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype),
        mmaction.video_template(module),
    )
    model.load_state_dict(
        mmaction.flax_video_to_mmaction_state_dict(variables, as_torch=True), strict=True
    )
    _, again, report = mmaction.mmaction_to_flax(model.state_dict())
    assert report.ok
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_registry_models_take_mmaction_weights_by_name(i3d_nl_r50_checkpoint, tmp_path, capsys):
    """`--model nl_i3d_r50` loads strictly (with the mmaction layout); a DNL model names the
    unary branch it lacks; the registry's paper layout stays the default elsewhere."""
    model, path = i3d_nl_r50_checkpoint
    assert convert.main([str(path), str(tmp_path / "nl"), "--model", "nl_i3d_r50"]) == 0
    summary = json.loads((tmp_path / "nl" / "conversion.json").read_text())
    assert summary["video_layout"]["conv1_temporal_stride"] == 2 and not summary["missing"]
    assert convert.main([str(path), str(tmp_path / "dnl"), "--model", "dnl_i3d_r50"]) == 2
    error = capsys.readouterr().err
    assert "missing:    backbone.layer2.1.non_local_block.conv_mask.weight" in error
    assert "10 missing, 0 unexpected, 0 mis-shaped" in error  # 5 blocks × conv_mask weight, bias
    args = [str(path), str(tmp_path / "dnl_partial"), "--model", "dnl_i3d_r50", "--partial"]
    assert convert.main(args) == 0  # The NL weights by name, a fresh unary branch.
    partial = restore(tmp_path / "dnl_partial" / "state")
    block = partial["params"]["backbone"]["layer2_1"]["dnl_block"]
    assert block["conv_mask"]["kernel"].shape == (1, 1, 1, 512, 1)
    np.testing.assert_array_equal(
        block["theta"]["conv"]["kernel"][0, 0, 0],
        model.state_dict()["backbone.layer2.1.non_local_block.theta.conv.weight"][:, :, 0, 0, 0]
        .numpy()
        .T,
    )
    assert convert.main([str(path), str(tmp_path / "seg"), "--model", "dnl_r50-d8"]) == 2
    assert "an mmaction2 recogniser converts into a video model" in capsys.readouterr().err


def test_unsupported_mmaction_backbones_fail_clearly():
    model = mmaction_recognizer(base=8, classes=3)
    state_dict = dict(model.state_dict())
    conv2 = "backbone.layer1.0.conv2.conv.weight"
    state_dict[conv2] = state_dict[conv2].repeat(1, 1, 3, 1, 1)  # inflate_style '3x3x3'
    with pytest.raises(ValueError, match="inflates the 3×3 convs in time"):
        mmaction.recognizer_config(state_dict)
    state_dict["backbone.conv1.conv.weight"] = torch.zeros(8, 3, 7, 7)  # mmaction2's 2-D C2D
    with pytest.raises(ValueError, match="2-D `C2D` backbone is not supported"):
        mmaction.recognizer_config(state_dict)
    with pytest.raises(ValueError, match="unknown video layout"):
        mmaction.recognizer_for_state_dict(model.state_dict(), layout="slowfast")


def test_a_missing_openmmlab_wheel_fails_instead_of_skipping():
    with pytest.raises(ImportError, match="make install"):
        package_root("mmdetection_not_installed")
