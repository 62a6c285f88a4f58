"""Tests of the video model: ResNet3D (C2D / I3D) with non-local blocks and its classifier
bundle. Full-size networks only through `jax.eval_shape`; real runs on tiny clips."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnl_jax import models, tasks
from dnl_jax.models import video


def abstract_init(module, input_shape):
    inputs = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), inputs)


def flat_params(variables) -> dict:
    return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(variables["params"]).items()}


def test_tiny_video_clip_runs_with_loss_and_accuracy_counts():
    bundle = tasks.get_model("dnl_i3d_tiny", num_classes=7)
    assert bundle.input_key == "video" and bundle.task == "video"
    clips = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))
    batch = {"video": clips, "label": jnp.array([1, 6])}
    variables = models.init_variables(bundle.module, jax.random.key(1), clips)

    def train_forward(v, x):
        outputs, updates = bundle.module.apply(
            v, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
        )
        return outputs, updates, bundle.loss_fn(outputs, batch), bundle.metrics_fn(outputs, batch)

    # Compiled without XLA's backend optimisation: 4x faster to compile on CPU, same values.
    compiled = (
        jax.jit(train_forward)
        .lower(variables, clips)
        .compile(compiler_options={"xla_backend_optimization_level": 0})
    )
    outputs, updates, (loss, scalars), counts = compiled(variables, clips)
    chex.assert_shape(outputs["logits"], (2, 7))
    chex.assert_tree_all_finite((outputs, loss))
    assert set(updates) == {"batch_stats"}
    np.testing.assert_allclose(loss, np.log(7), rtol=0.1)  # fc starts near 0: uniform softmax
    assert set(scalars) == {"loss", "cross_entropy", "accuracy"}
    assert counts["count"] == 2 and 0 <= counts["correct"] <= 2
    # Non-local blocks after every second block of res3 and res4 only (ResNet-18: blocks 1).
    blocks = {name.split("/")[1] for name in flat_params(variables) if "dnl_block" in name}
    assert blocks == {"layer2_1", "layer3_1"}


@pytest.mark.parametrize(
    "name, kind, count",
    [("dnl_i3d_r50", "dnl", 5), ("nl_i3d_r50", "nl", 5), ("dnl_c2d_r50", "dnl", 5)],
)
def test_resnet50_video_models_have_five_blocks_in_res3_and_res4(name, kind, count):
    variables = abstract_init(tasks.get_model(name, 400).module, (1, 8, 64, 64, 3))
    params = flat_params(variables)
    hosts = sorted({n.split("/")[1] for n in params if f"/{kind}_block/" in n})
    assert hosts == ["layer2_1", "layer2_3", "layer3_1", "layer3_3", "layer3_5"][:count]
    # Inner width C/2; keys/values sub-sampled in space only, so the projections are 1×1×1.
    assert params[f"backbone/layer3_1/{kind}_block/theta/conv/kernel"].shape == (1, 1, 1, 1024, 512)
    assert params["fc/kernel"].shape == (2048, 400)


def test_c2d_has_no_temporal_kernels_and_i3d_inflates_the_official_pattern():
    c2d = flat_params(abstract_init(tasks.get_model("dnl_c2d_r50", 10).module, (1, 4, 32, 32, 3)))
    i3d = flat_params(abstract_init(tasks.get_model("dnl_i3d_r50", 10).module, (1, 4, 32, 32, 3)))
    assert all(v.shape[0] == 1 for n, v in c2d.items() if n.endswith("kernel") and v.ndim == 5)
    assert i3d["backbone/conv1/kernel"].shape[:3] == (5, 7, 7)
    inflated = {
        n.split("/")[1]
        for n, v in i3d.items()
        if n.endswith("conv1/kernel") and "layer" in n and v.shape[0] == 3
    }
    expected = {
        "layer1_0",
        "layer1_1",
        "layer1_2",
        "layer2_0",
        "layer2_2",
        "layer3_0",
        "layer3_2",
        "layer3_4",
        "layer4_1",
    }
    assert inflated == expected


def test_video_feature_shape_and_temporal_pool():
    backbone = video.ResNet3D(depth=18, base_channels=2, stem_channels=4)
    inputs = jax.ShapeDtypeStruct((1, 8, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), inputs)
    features = jax.eval_shape(lambda v, x: backbone.apply(v, x), variables, inputs)
    assert features.shape == (1, 4, 2, 2, 16)
    no_pool = backbone.clone(temporal_pool=False)
    features = jax.eval_shape(lambda v, x: no_pool.apply(v, x), variables, inputs)
    assert features.shape == (1, 8, 2, 2, 16)


def test_video_bad_inputs_raise():
    module = tasks.get_model("dnl_i3d_tiny", 5).module
    with pytest.raises(ValueError, match=r"clips \[B, T, H, W, 3\] \(rank 5\)"):
        abstract_init(module, (1, 32, 32, 3))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        abstract_init(module, (1, 4, 32, 32, 1))
    with pytest.raises(ValueError, match="unknown inflation"):
        tasks.get_model("dnl_i3d_tiny", 5, inflation="r2plus1d")
    with pytest.raises(ValueError, match="context must be 'dnl', 'nl' or None"):
        tasks.get_model("dnl_i3d_tiny", 5, context="gc")
    with pytest.raises(ValueError, match="unknown override.*output_stride"):
        tasks.get_model("dnl_i3d_tiny", 5, output_stride=8)


def test_mmaction_layout_strides_time_eightfold_by_res3_and_drops_the_nl_scale():
    """`layout='mmaction'` (mmaction2's I3D strides) vs the paper's: a 32-frame clip reaches res5
    with 4 frames instead of 16; the NL blocks lose their 1/√C' unless use_scale says otherwise."""
    inputs = jax.ShapeDtypeStruct((1, 32, 64, 64, 3), jnp.float32)
    frames = {}
    for layout in ("paper", "mmaction"):
        module = tasks.get_model("dnl_i3d_tiny", 5, context="nl", layout=layout).module
        variables = jax.eval_shape(
            lambda x, m=module: m.backbone.init(jax.random.key(0), x), inputs
        )
        frames[layout] = jax.eval_shape(module.backbone.apply, variables, inputs).shape[1]
        assert module.backbone.context.use_scale == (layout == "paper")
    assert frames == {"paper": 16, "mmaction": 4}
    scaled = tasks.get_model("dnl_i3d_tiny", 5, layout="mmaction", use_scale=True).module
    assert scaled.backbone.context.use_scale and scaled.backbone.conv1_temporal_stride == 2
    with pytest.raises(ValueError, match="unknown video layout"):
        tasks.get_model("dnl_i3d_tiny", 5, layout="slowfast")
