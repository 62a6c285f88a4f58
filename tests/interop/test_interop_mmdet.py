"""mmdet Mask R-CNN R50-FPN vs dnl_jax `MaskRCNN`: the real mmdet 3.3.0 `ResNet` (with mmcv's
`ContextBlock` plug-in), `FPN`, `RPNHead`, `Shared2FCBBoxHead` / `Shared4Conv1FCBBoxHead` and
`FCNMaskHead` (tests/interop/mmdet_detector.py), converted with `dnl_jax.interop.mmdet` and
`python -m dnl_jax.cli.convert`.

The 4conv1fc detector has the official DNL configs' norms: batch norm (mmdet `norm_cfg=BN`) in
the FPN, the box head's and the mask head's convs.

Random weights and batch-norm statistics, eval mode, R50 with reduced widths (mmdet's ResNet
takes `stem_channels` / `base_channels`) on a 64×64 image: backbone + FPN features, RPN outputs
per level, box and mask head outputs on given RoI features, all within 1e-4 relative. The
mmdetection v1 layout (the official DNL checkpoints): test_interop_mmdet_v1.py."""

import json

import jax
import numpy as np
import pytest
from mmdet_detector import BASE, BN, CLASSES, CONV, FC, FPN, MMDET, STEM, nhwc, state_dict_of, to_v1
from torch_reference import randomize, relative_error, require
from train_testing import restore

from dnl_jax.interop import convert, mapping, mmdet
from dnl_jax.models.detection.mask_rcnn import MaskRCNN

torch = require("torch")


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
    levels = module.apply(variables, nhwc(image), method=lambda m, x: m._features(x, False))
    assert len(levels) == len(expected) == 5
    for ours, theirs in zip(levels, expected, strict=False):
        assert relative_error(np.asarray(ours), nhwc(theirs)) < 1e-4

    for level in expected:  # RPN on mmdet's own features: (y, x, anchor) order.
        with torch.no_grad():
            cls, reg = reference.rpn_head.forward_single(level)
        logits, deltas = module.apply(variables, nhwc(level), method=lambda m, x: m.rpn_head(x))
        assert relative_error(np.asarray(logits), nhwc(cls).reshape(1, -1)) < 1e-4
        assert relative_error(np.asarray(deltas), nhwc(reg).reshape(1, -1, 4)) < 1e-4

    rng = np.random.default_rng(1)
    rois = rng.normal(size=(5, FPN, 7, 7)).astype(np.float32)
    with torch.no_grad():
        cls_score, bbox_pred = reference.roi_head.bbox_head(torch.tensor(rois))
    logits, deltas = module.apply(variables, nhwc(rois), method=lambda m, x: m.bbox_head(x))
    assert logits.shape == (5, CLASSES + 1) and deltas.shape == (5, 4 * CLASSES)
    assert relative_error(np.asarray(logits), cls_score.numpy()) < 1e-4
    assert relative_error(np.asarray(deltas), bbox_pred.numpy()) < 1e-4

    mask_rois = rng.normal(size=(4, FPN, 14, 14)).astype(np.float32)
    with torch.no_grad():
        mask_pred = reference.roi_head.mask_head(torch.tensor(mask_rois))
    masks = module.apply(variables, nhwc(mask_rois), method=lambda m, x: m.mask_head(x))
    assert masks.shape == (4, 28, 28, CLASSES)
    assert relative_error(np.asarray(masks), nhwc(mask_pred)) < 1e-4


def test_strict_reports_name_the_key(two_fc):
    reference, _, _, _ = two_fc
    state_dict = state_dict_of(reference)
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
    state_dict = state_dict_of(reference)
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
        {"state_dict": {k: torch.tensor(v) for k, v in to_v1(state_dict_of(reference)).items()}},
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
