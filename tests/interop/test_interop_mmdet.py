"""mmdet Mask R-CNN R50-FPN vs dnl_jax `MaskRCNN`: the real mmdet 3.3.0 `ResNet` (with mmcv's
`ContextBlock` plug-in), `FPN`, `RPNHead`, `Shared2FCBBoxHead` / `Shared4Conv1FCBBoxHead` and
`FCNMaskHead` (tests/openmmlab_reference.py), converted with `dnl_jax.interop.mmdet` and
`python -m dnl_jax.cli.convert`.

The 4conv1fc detector has the official DNL configs' norms: batch norm (mmdet `norm_cfg=BN`) in
the FPN, the box head's and the mask head's convs. In-Place ABN (the official SyncABN) is
checked with a stand-in for its layer written from inplace_abn's formula.

Random weights and batch-norm statistics, eval mode, R50 with reduced widths (mmdet's ResNet
takes `stem_channels` / `base_channels`) on a 64×64 image: backbone + FPN features, RPN outputs
per level, box and mask head outputs on given RoI features, all within 1e-4 relative. The
mmdetection v1 layout (the official DNL checkpoints) is made here by renaming and re-ordering the
classes of the v3 state_dict, and must convert to the same variables."""

import json

import jax
import numpy as np
import pytest
from openmmlab_reference import mmdet_models
from torch_reference import OfficialReference, randomize, relative_error, require
from train_testing import restore

from dnl_jax.core.blocks_official import OFFICIAL_VARIANTS, OfficialDisentangledNonLocal
from dnl_jax.interop import convert, mapping, mmdet
from dnl_jax.models.detection.mask_rcnn import MaskRCNN

torch = require("torch")
MMDET = mmdet_models()

STEM, BASE, FPN, FC, CONV, CLASSES = 16, 16, 32, 64, 16, 3
BN = dict(type="BN", requires_grad=True)
ANCHORS = dict(
    type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]
)
GC_STAGE3 = [
    dict(
        cfg=dict(type="ContextBlock", ratio=1 / 4),
        stages=(False, False, True, False),
        position="after_conv3",
    )
]


class RoIHead(torch.nn.Module):
    """The key layout of mmdet's `StandardRoIHead` (`roi_head.bbox_head`, `roi_head.mask_head`);
    its RoI extractors have no weights."""

    def __init__(self, bbox_head, mask_head):
        super().__init__()
        self.bbox_head, self.mask_head = bbox_head, mask_head


class Detector(torch.nn.Module):
    """mmdet's `MaskRCNN` key layout (backbone, neck, rpn_head, roi_head)."""

    def __init__(self, box_head="2fc", gc=False, norms=False):
        super().__init__()
        self.backbone = MMDET.ResNet(
            depth=50,
            stem_channels=STEM,
            base_channels=BASE,
            out_indices=(0, 1, 2, 3),
            frozen_stages=1,
            norm_cfg=BN,
            norm_eval=True,
            style="pytorch",
            plugins=GC_STAGE3 if gc else None,
        )
        self.neck = MMDET.FPN(
            in_channels=[BASE * 4 * 2**s for s in range(4)],
            out_channels=FPN,
            num_outs=5,
            norm_cfg=BN if norms else None,
        )
        self.rpn_head = MMDET.RPNHead(in_channels=FPN, feat_channels=FPN, anchor_generator=ANCHORS)
        common = dict(in_channels=FPN, fc_out_channels=FC, roi_feat_size=7, num_classes=CLASSES)
        if box_head == "2fc":
            bbox_head = MMDET.Shared2FCBBoxHead(**common)
        else:
            bbox_head = MMDET.Shared4Conv1FCBBoxHead(conv_out_channels=CONV, norm_cfg=BN, **common)
        mask_head = MMDET.FCNMaskHead(
            num_convs=4,
            in_channels=FPN,
            conv_out_channels=CONV,
            num_classes=CLASSES,
            norm_cfg=BN if norms else None,
        )
        self.roi_head = RoIHead(bbox_head, mask_head)


def _nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


def _state_dict(model):
    return {key: value.numpy() for key, value in model.state_dict().items()}


@pytest.fixture(name="two_fc", scope="module")
def fixture_two_fc():
    reference = randomize(Detector("2fc"), seed=0, fan_in_weights=True)
    module, variables, report = mmdet.mmdet_to_flax(_state_dict(reference))
    return reference, module, variables, report


@pytest.fixture(name="four_conv_gc", scope="module")
def fixture_four_conv_gc():
    reference = randomize(Detector("4conv1fc", gc=True, norms=True), seed=1, fan_in_weights=True)
    module, variables, report = mmdet.mmdet_to_flax(_state_dict(reference))
    return reference, module, variables, report


def test_architecture_is_read_from_the_keys(two_fc, four_conv_gc):
    _, module, _, report = two_fc
    assert report.ok and module.box_head == "2fc" and module.head_norm is None
    assert module.neck_norm is None and module.mask_norm is None
    assert (
        module.num_classes,
        module.depth,
        module.stem_channels,
        module.base_channels,
        module.fpn_channels,
        module.fc_channels,
        module.conv_channels,
    ) == (CLASSES, 50, STEM, BASE, FPN, FC, CONV)
    assert module.context is None
    _, module, _, report = four_conv_gc
    assert report.ok and module.box_head == "4conv1fc" and module.head_norm == "batch"
    assert module.neck_norm == module.mask_norm == "batch"
    assert (module.context.kind, module.context.placement) == ("gc", "before_add")
    assert module.context.ratio == pytest.approx(1 / 4)
    assert module.context_block_indices == ((), (), tuple(range(6)), ())


@pytest.mark.parametrize("case", ["two_fc", "four_conv_gc"])
def test_features_and_heads_match_mmdet(case, request):
    reference, module, variables, _ = request.getfixturevalue(case)
    image = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = reference.neck(reference.backbone(torch.tensor(image)))
    levels = module.apply(variables, _nhwc(image), method=lambda m, x: m._features(x, False))
    assert len(levels) == len(expected) == 5
    for ours, theirs in zip(levels, expected, strict=False):
        assert relative_error(np.asarray(ours), _nhwc(theirs)) < 1e-4

    for level in expected:  # RPN on mmdet's own features: (y, x, anchor) order.
        with torch.no_grad():
            cls, reg = reference.rpn_head.forward_single(level)
        logits, deltas = module.apply(variables, _nhwc(level), method=lambda m, x: m.rpn_head(x))
        assert relative_error(np.asarray(logits), _nhwc(cls).reshape(1, -1)) < 1e-4
        assert relative_error(np.asarray(deltas), _nhwc(reg).reshape(1, -1, 4)) < 1e-4

    rng = np.random.default_rng(1)
    rois = rng.normal(size=(5, FPN, 7, 7)).astype(np.float32)
    with torch.no_grad():
        cls_score, bbox_pred = reference.roi_head.bbox_head(torch.tensor(rois))
    logits, deltas = module.apply(variables, _nhwc(rois), method=lambda m, x: m.bbox_head(x))
    assert logits.shape == (5, CLASSES + 1) and deltas.shape == (5, 4 * CLASSES)
    assert relative_error(np.asarray(logits), cls_score.numpy()) < 1e-4
    assert relative_error(np.asarray(deltas), bbox_pred.numpy()) < 1e-4

    mask_rois = rng.normal(size=(4, FPN, 14, 14)).astype(np.float32)
    with torch.no_grad():
        mask_pred = reference.roi_head.mask_head(torch.tensor(mask_rois))
    masks = module.apply(variables, _nhwc(mask_rois), method=lambda m, x: m.mask_head(x))
    assert masks.shape == (4, 28, 28, CLASSES)
    assert relative_error(np.asarray(masks), _nhwc(mask_pred)) < 1e-4


def to_v1(state_dict):
    """The mmdetection v1 layout of a v3 state_dict: no `roi_head.` prefix, the background is
    class 0 of fc_cls, has (never trained) fc_reg rows 0–3 and conv_logits channel 0."""
    rng = np.random.default_rng(7)
    v1 = {}
    for key, value in state_dict.items():
        key = key.removeprefix("roi_head.")
        if key.startswith("bbox_head.fc_cls."):
            value = np.roll(value, 1, axis=0)  # background last → first
        elif key.startswith(("bbox_head.fc_reg.", "mask_head.conv_logits.")):
            rows = 4 if "fc_reg" in key else 1
            value = np.concatenate([rng.normal(size=(rows, *value.shape[1:])), value])
        v1[key] = value.astype(np.float32)
    return v1


@pytest.mark.parametrize("case", ["two_fc", "four_conv_gc"])
def test_v1_layout_converts_to_the_same_variables(case, request):
    reference, module, variables, _ = request.getfixturevalue(case)
    v1 = to_v1(_state_dict(reference))
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
    v1 = to_v1(_state_dict(reference))
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
        {"params": block}, _nhwc(x)
    )
    assert relative_error(np.asarray(ours), _nhwc(expected)) < 1e-4


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
    import copy  # pylint: disable=import-outside-toplevel

    reference, _, _, _ = four_conv_gc
    abn = copy.deepcopy(reference)
    rng = np.random.default_rng(11)
    convs = [*abn.neck.lateral_convs, *abn.neck.fpn_convs, *abn.roi_head.mask_head.convs]
    for conv_module in convs:
        conv_module.bn = InPlaceABNStandIn(conv_module.bn, rng)
    v1 = to_v1(_state_dict(abn))
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
                [_nhwc(x) for x in inputs],
                _nhwc(features),
                method=lambda m, levels, rois: (*m.neck(levels), m.mask_head(rois)),
            )
        ]

    for ours, theirs in zip(apply(variables), expected, strict=False):
        assert relative_error(ours, _nhwc(theirs)) < 1e-4
    assert relative_error(apply(plain)[-1], _nhwc(expected[-1])) > 0.1


def test_strict_reports_name_the_key(two_fc):
    reference, _, _, _ = two_fc
    state_dict = _state_dict(reference)
    missing = dict(state_dict)
    del missing["neck.fpn_convs.2.conv.bias"]
    with pytest.raises(mapping.ConversionError, match=r"missing: +neck\.fpn_convs\.2\.conv\.bias"):
        mmdet.mmdet_to_flax(missing)
    extra = {**state_dict, "roi_head.mask_head.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(mapping.ConversionError, match=r"unexpected: roi_head\.mask_head\.extra"):
        mmdet.mmdet_to_flax(extra)
    wrong = {**state_dict, "rpn_head.rpn_conv.weight": np.zeros((FPN, FPN, 1, 1), np.float32)}
    with pytest.raises(mapping.ConversionError, match=r"mis-shaped: rpn_head\.rpn_conv\.weight"):
        mmdet.mmdet_to_flax(wrong)
    _, _, report = mmdet.mmdet_to_flax(missing, strict=False)
    assert [key for key, _ in report.missing] == ["neck.fpn_convs.2.conv.bias"]


def test_unsupported_checkpoints_fail_clearly(two_fc):
    reference, _, _, _ = two_fc
    state_dict = _state_dict(reference)
    lateral_only = {**state_dict, "neck.lateral_convs.0.bn.weight": np.ones(FPN, np.float32)}
    with pytest.raises(ValueError, match=r"the FPN has a norm in only some of its convs"):
        mmdet.detector_config(lateral_only)
    group_norm = {**state_dict, "roi_head.mask_head.convs.1.gn.weight": np.ones(CONV, np.float32)}
    with pytest.raises(ValueError, match=r"mask_head\.convs\.1\.\*\) has \['gn'\]"):
        mmdet.detector_config(group_norm)
    agnostic = {**state_dict, "roi_head.bbox_head.fc_reg.weight": np.zeros((4, FC), np.float32)}
    with pytest.raises(ValueError, match="class-agnostic"):
        mmdet.detector_config(agnostic)
    with pytest.raises(ValueError, match="not an mmdet Mask R-CNN"):
        mmdet.detect_layout({"backbone.conv1.weight": np.zeros(1)})


def test_convert_cli_writes_the_detector(tmp_path, four_conv_gc):
    reference, module, variables, _ = four_conv_gc
    source = tmp_path / "mask_rcnn_v1.pth"
    torch.save(
        {"state_dict": {k: torch.tensor(v) for k, v in to_v1(_state_dict(reference)).items()}},
        source,
    )
    assert convert.main([str(source), str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert summary["num_classes"] == CLASSES and not summary["missing"]
    assert summary["loaded"] == summary["model_tensors"] == len(jax.tree.leaves(variables))
    jax.tree.map(np.testing.assert_array_equal, restore(tmp_path / "out" / "state"), variables)
    assert isinstance(module, MaskRCNN)
    # --abn true: every batch norm is read as In-Place ABN, whose scale is |weight| + eps.
    assert convert.main([str(source), str(tmp_path / "abn"), "--abn", "true"]) == 0
    abn = restore(tmp_path / "abn" / "state")

    norms = [
        jax.tree_util.keystr(path[:-1])
        for path, _ in jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
        if jax.tree_util.keystr(path).endswith("['mean']")
    ]  # the batch norms' paths

    def check(path, ours, plain):
        key = jax.tree_util.keystr(path)
        if key.startswith("['params']") and key[len("['params']") :] in {
            f"{norm}['scale']" for norm in norms
        }:
            np.testing.assert_allclose(ours, np.abs(plain) + 1e-5, rtol=1e-6)
        else:  # convs, biases, the GC blocks' layer norms, statistics: unchanged
            np.testing.assert_array_equal(ours, plain)

    assert len(norms) > 50
    jax.tree_util.tree_map_with_path(check, abn, variables)


def test_torchvision_resnet50_loads_into_the_detector_backbone(tmp_path):
    """`torchvision_resnet50` (pretrained.BACKBONES) → MaskRCNN's `params['backbone']` with
    `load_into`, in the official DNL c4+c5 placement: every backbone leaf but the context
    blocks' comes from the file. The file is mmdet's ResNet-50 state_dict (torchvision's key
    names and shapes; torchvision itself is not installed) plus an ImageNet `fc`."""
    from types import SimpleNamespace  # pylint: disable=import-outside-toplevel

    from dnl_jax.interop import pretrained as convert_cli  # pylint: disable=import-outside-toplevel
    from dnl_jax.models.residual import ContextSpec  # pylint: disable=import-outside-toplevel
    from dnl_jax.train import initialisation  # pylint: disable=import-outside-toplevel
    from dnl_jax.train.checkpoint import load_variables  # pylint: disable=import-outside-toplevel

    resnet = randomize(MMDET.ResNet(depth=50, norm_cfg=BN), seed=5)
    state_dict = dict(resnet.state_dict())
    state_dict["fc.weight"], state_dict["fc.bias"] = torch.zeros(10, 2048), torch.zeros(10)
    source = tmp_path / "resnet50-0676ba61.pth"
    torch.save(state_dict, source)
    spec = initialisation.BACKBONES["torchvision_resnet50"]
    convert_cli.convert_backbone(spec, str(source), str(tmp_path / "pretrained"))

    module = MaskRCNN(
        num_classes=CLASSES,
        context=ContextSpec("dnl_official", "after_add", reduction=4),
        context_block_indices=((), (), (-2,), (0, 1, 2)),
    )
    fresh = jax.tree.map(
        lambda leaf: np.zeros(leaf.shape, leaf.dtype), mmdet.detector_template(module)
    )
    config = SimpleNamespace(pretrained=spec.name, pretrained_dir=str(tmp_path / "pretrained"))
    params, stats = initialisation.load_into(
        config, fresh["params"], fresh["batch_stats"], load_variables
    )
    backbone = params["backbone"]
    np.testing.assert_array_equal(
        backbone["conv1"]["kernel"], state_dict["conv1.weight"].numpy().transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        stats["backbone"]["layer4_2"]["bn3"]["var"], state_dict["layer4.2.bn3.running_var"].numpy()
    )
    assert not np.any(backbone["layer3_4"]["dnl_official_block"]["conv_value"]["kernel"])
    assert not np.any(params["bbox_head"]["fc_cls"]["kernel"])  # heads keep their init
