"""torchvision ImageNet ResNets → dnl_jax `ResNetV1b` (7×7 stem): parity of every stage, the
parameter counts of torchvision's resnet18/resnet50, depth checks, loading into a segmentor."""

import jax
import numpy as np
import pytest
from openmmlab_reference import mmseg_models
from torch_reference import randomize, relative_error, require

from dnl_jax import interop
from dnl_jax.interop import mapping, segmentor
from dnl_jax.models import heads
from dnl_jax.models.resnet_v1b import ResNetV1b
from dnl_jax.models.segmentor import Segmentor

torch = require("torch")

# torchvision.models.resnet18().parameters() / resnet50(): ImageNet classifier included.
TORCHVISION_PARAMS = {18: 11_689_512, 50: 25_557_032}


def torchvision_resnet(depth, seed=0):
    """mmseg's `ResNet` (V1b: torchvision's layout and keys, 7×7 stem `conv1`/`bn1`, no dilation)
    + an fc 512·expansion → 1000, as torchvision's ImageNet models."""
    bottleneck = depth >= 50
    model = mmseg_models().ResNet(
        depth=depth, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), out_indices=(0, 1, 2, 3)
    )
    model.fc = torch.nn.Linear(512 * (4 if bottleneck else 1), 1000)
    return randomize(model, seed=seed, std=0.03)


@pytest.mark.parametrize("depth", [18, 50])
def test_layout_matches_torchvision_and_converts_strictly(depth):
    model = torchvision_resnet(depth)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[depth]
    module, variables, report = interop.torchvision_resnet_to_flax(model.state_dict(), depth)
    assert report.ok and isinstance(module, ResNetV1b) and module.depth == depth
    fc = 1000 * (512 * (4 if depth >= 50 else 1) + 1)
    assert (
        sum(p.size for p in jax.tree.leaves(variables["params"])) == TORCHVISION_PARAMS[depth] - fc
    )
    with pytest.raises(ValueError, match=f"pass depth={depth} or None"):
        interop.torchvision_resnet_to_flax(model.state_dict(), 101 if depth == 50 else 34)


def test_resnet18_stage_parity():
    model = torchvision_resnet(18, seed=1)
    module, variables, _ = interop.torchvision_resnet_to_flax(model.state_dict())
    x = np.random.default_rng(2).standard_normal((1, 3, 45, 51)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.tensor(x))]
    features = jax.jit(module.apply)(variables, x.transpose(0, 2, 3, 1))
    assert [f.shape[1:3] for f in features] == [e.shape[2:] for e in expected]
    for got, want in zip(features, expected, strict=False):
        assert relative_error(np.asarray(got).transpose(0, 3, 1, 2), want) < 1e-5


def test_torchvision_backbone_into_a_dilated_segmentor():
    model = torchvision_resnet(18, seed=3)
    backbone, variables, _ = interop.torchvision_resnet_to_flax(model.state_dict(), output_stride=8)
    seg = Segmentor(
        backbone=backbone,
        decode_head=heads.DNLHead(num_classes=4, channels=16),
        auxiliary_head=heads.FCNHead(num_classes=4, channels=8, num_convs=1, concat_input=False),
    )
    template = segmentor.segmentor_template(seg)
    fresh = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), template)
    loaded = {collection: {"backbone": tree} for collection, tree in variables.items()}
    merged = interop.merge_variables(fresh, loaded)
    jax.tree.map(np.testing.assert_array_equal, merged["params"]["backbone"], variables["params"])
    # The torch side of the round trip: back to torchvision keys, exactly.
    back = mapping.flax_to_torch_state_dict(variables, rename=segmentor.mmseg_rename)
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        interop.torchvision_resnet_to_flax({"stem.0.weight": np.zeros((4, 3, 3, 3), np.float32)})
