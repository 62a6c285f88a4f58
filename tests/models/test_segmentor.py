"""The segmentor (dilated ResNet-V1c + decode heads): parameter counts against the PyTorch
references, parameter names, shapes at every output stride, the resize, context blocks in the
backbone, batch-norm modes and compute dtypes. Big models only go through `jax.eval_shape` (no
memory, no compile); real runs use tiny widths."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testing import compile_for, flat_names, run_compiled, shapes_of_init

from dnl_jax import models, tasks

# Reference counts from mmseg/mmcv (shared/DESIGN.md), `params` only.
RESNET_V1C_PARAMS = {50: 23_527_264, 101: 42_519_392}
DNL_HEAD_2048_TO_512_19 = 24_132_372
FCN_AUX_HEAD_1024_TO_256_19 = 2_364_691


# ---------------------------------------------------------------------------------------------
# Parameter counts and names.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 101])
def test_resnet_v1c_trunk_parameter_count(depth):
    variables = shapes_of_init(models.ResNetV1c(depth=depth), (1, 64, 64, 3))
    assert models.count_params(variables["params"]) == RESNET_V1C_PARAMS[depth]


# torchvision trunk counts (resnetN minus its fc) + the V1c deep stem's extra 19,232 parameters
# (3·9·32 + 32·9·32 + 32·9·64 conv weights and 2·(32 + 32 + 64) BN ones, minus the 7×7 conv's
# 9,408 and its BN's 128); the same rule gives the reference counts for 50 and 101.
@pytest.mark.parametrize(
    "depth, torchvision_trunk", [(18, 11_176_512), (34, 21_284_672), (152, 58_143_808)]
)
def test_other_depths_match_torchvision_plus_deep_stem(depth, torchvision_trunk):
    variables = shapes_of_init(models.ResNetV1c(depth=depth), (1, 64, 64, 3))
    assert models.count_params(variables["params"]) == torchvision_trunk + 19_232


def test_head_parameter_counts():
    dnl = shapes_of_init(models.DNLHead(num_classes=19, channels=512), (1, 16, 16, 2048))
    fcn = shapes_of_init(
        models.FCNHead(num_classes=19, channels=256, num_convs=1, concat_input=False),
        (1, 16, 16, 1024),
    )
    assert models.count_params(dnl["params"]) == DNL_HEAD_2048_TO_512_19
    assert models.count_params(fcn["params"]) == FCN_AUX_HEAD_1024_TO_256_19


def test_full_r101_d8_dnl_segmentor_initialises_abstractly():
    bundle = tasks.get_model("dnl_r101-d8", num_classes=19)
    variables = shapes_of_init(bundle.module, (1, 512, 1024, 3), train=False)
    counts = {k: models.count_params(v) for k, v in variables["params"].items()}
    assert counts == {
        "backbone": RESNET_V1C_PARAMS[101],
        "decode_head": DNL_HEAD_2048_TO_512_19,
        "auxiliary_head": FCN_AUX_HEAD_1024_TO_256_19,
    }
    assert set(variables) == {"params", "batch_stats"}


def test_parameter_names_mirror_mmseg_state_dict_keys():
    variables = shapes_of_init(tasks.get_model("dnl_tiny", 5).module, (1, 32, 32, 3))
    params, stats = flat_names(variables["params"]), flat_names(variables["batch_stats"])
    expected_params = {
        "backbone/stem_0/kernel",
        "backbone/stem_1/scale",
        "backbone/stem_3/kernel",
        "backbone/stem_6/kernel",
        "backbone/stem_7/bias",
        "backbone/layer1_0/conv1/kernel",
        "backbone/layer2_0/downsample_0/kernel",
        "backbone/layer2_0/downsample_1/scale",
        "decode_head/convs_0/conv/kernel",
        "decode_head/convs_1/bn/scale",
        "decode_head/dnl_block/theta/conv/kernel",
        "decode_head/dnl_block/conv_mask/kernel",
        "decode_head/dnl_block/conv_out/conv/kernel",
        "decode_head/conv_cat/conv/kernel",
        "decode_head/conv_seg/kernel",
        "decode_head/conv_seg/bias",
        "auxiliary_head/convs_0/conv/kernel",
        "auxiliary_head/conv_seg/kernel",
    }
    assert expected_params <= params, expected_params - params
    assert {
        "backbone/stem_1/mean",
        "backbone/layer1_0/bn1/var",
        "decode_head/dnl_block/conv_out/bn/mean",
    } <= stats


# ---------------------------------------------------------------------------------------------
# Shapes.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output_stride, strides", [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16)), (32, (4, 8, 16, 32))]
)
def test_output_stride_sets_stage_resolutions(output_stride, strides):
    backbone = models.ResNetV1c(
        depth=18, base_channels=4, stem_channels=8, output_stride=output_stride
    )
    inputs = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), inputs)
    stages = jax.eval_shape(lambda v, x: backbone.apply(v, x), variables, inputs)
    assert [s.shape[1:3] for s in stages] == [(64 // s, 96 // s) for s in strides]
    assert [s.shape[-1] for s in stages] == [4, 8, 16, 32]


def test_bottleneck_widths_and_odd_sizes_round_up_like_pytorch():
    backbone = models.ResNetV1c(depth=50, base_channels=2, stem_channels=4)
    inputs = jax.ShapeDtypeStruct((1, 97, 131, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), inputs)
    stages = jax.eval_shape(lambda v, x: backbone.apply(v, x), variables, inputs)
    # 97 → 49 (stem conv, stride 2) → 25 (max-pool) → 13 (stage 2); PyTorch gives the same.
    assert [s.shape for s in stages] == [
        (1, 25, 33, 8),
        (1, 13, 17, 16),
        (1, 13, 17, 32),
        (1, 13, 17, 64),
    ]


def test_tiny_segmentor_logits_at_any_input_size(tiny):
    bundle, variables = tiny
    images = jax.random.normal(jax.random.key(2), (1, 97, 131, 3))
    outputs = run_compiled(lambda v, x: bundle.module.apply(v, x, train=False), variables, images)
    assert set(outputs) == {"logits"}
    chex.assert_shape(outputs["logits"], (1, 97, 131, 5))
    chex.assert_tree_all_finite(outputs)


def test_train_step_outputs_aux_logits_updates_stats_and_lowers_the_loss(tiny):
    bundle, variables = tiny
    images = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(4), (2, 32, 32), 0, 5)
    batch = {"image": images, "label": labels.at[:, :4].set(255)}

    def loss_of(params):
        outputs, updates = bundle.module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            rngs={"dropout": jax.random.key(5)},
            mutable=["batch_stats"],
        )
        loss, scalars = bundle.loss_fn(outputs, batch)
        return loss, (outputs, updates, scalars)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    (loss, (outputs, updates, scalars)), grads = run_compiled(grad_fn, variables["params"])
    chex.assert_shape([outputs["logits"], outputs["aux_logits"]], (2, 32, 32, 5))
    assert set(scalars) == {
        "loss",
        "decode_loss",
        "aux_loss",
        "pixel_accuracy",
        "out_of_range_labels",
    }
    np.testing.assert_allclose(loss, scalars["decode_loss"] + 0.4 * scalars["aux_loss"], rtol=1e-6)
    assert set(updates) == {"batch_stats"}
    assert not np.allclose(updates["batch_stats"]["backbone"]["stem_1"]["mean"], 0.0)
    stepped = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, variables["params"], grads)
    (new_loss, _), _ = run_compiled(grad_fn, stepped)
    assert new_loss < loss


# ---------------------------------------------------------------------------------------------
# Resize, context blocks in the backbone, batch-norm modes, dtype.
# ---------------------------------------------------------------------------------------------


def numpy_resize_align_corners_false(x, out_h, out_w):
    """PyTorch `interpolate(bilinear, align_corners=False)` for [H, W] arrays, written out."""

    def axis_weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), lo] += 1 - frac
        m[np.arange(n_out), hi] += frac
        return m

    return axis_weights(x.shape[0], out_h) @ x @ axis_weights(x.shape[1], out_w).T


def test_resize_matches_pytorch_bilinear_align_corners_false():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    got = models.segmentor.resize_bilinear(jnp.asarray(x)[None, :, :, None], (37, 19))[0, ..., 0]
    np.testing.assert_allclose(got, numpy_resize_align_corners_false(x, 37, 19), atol=1e-5)


def backbone_with_block(placement):
    """A tiny ResNet-18 with a DNL block in the last block of stage 3."""
    spec = models.ContextSpec(kind="dnl", placement=placement)
    return models.ResNetV1c(
        depth=18,
        base_channels=4,
        stem_channels=8,
        context=spec,
        context_block_indices=((), (), (-1,), ()),
    )


def test_context_block_placements_in_the_backbone():
    images = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    after_add_net, after_block_net, before_add_net = map(
        backbone_with_block, ("after_add", "after_block", "before_add")
    )
    variables = models.init_variables(after_add_net, jax.random.key(1), images)
    assert "dnl_block" in variables["params"]["layer3_1"]
    others = [k for k in variables["params"] if k != "layer3_1"]
    assert not any("dnl_block" in variables["params"][k] for k in others)
    plain_variables = jax.tree_util.tree_map(lambda x: x, variables)
    for collection in ("params", "batch_stats"):
        del plain_variables[collection]["layer3_1"]["dnl_block"]
    plain_net = after_add_net.clone(context=None, context_block_indices=None)
    baseline = run_compiled(plain_net.apply, plain_variables, images)
    after_add = compile_for(after_add_net.apply, variables, images)
    after_block = compile_for(after_block_net.apply, variables, images)
    before_add = compile_for(before_add_net.apply, variables, images)
    # The block starts as the identity (zero-init output BN): any placement = the plain net.
    for forward in (after_add, after_block, before_add):
        chex.assert_trees_all_close(forward(variables, images), baseline, atol=1e-6)
    # Once the block is active, the placement (before or after the final ReLU) matters.
    active = flax.core.unfreeze(variables)
    bn = active["params"]["layer3_1"]["dnl_block"]["conv_out"]["bn"]
    bn["scale"], bn["bias"] = jnp.ones_like(bn["scale"]), -jnp.ones_like(bn["bias"])
    add_out, block_out = after_add(active, images), after_block(active, images)
    branch_out = before_add(active, images)
    assert float(jnp.min(add_out[2])) >= 0.0  # ReLU comes last
    assert float(jnp.min(block_out[2])) < 0.0  # the block's negative bias survives
    assert not np.allclose(branch_out[2], add_out[2])  # the block sees the branch, not the sum
    chex.assert_trees_all_close(add_out[:2], block_out[:2], branch_out[:2])  # earlier stages


def test_frozen_bn_keeps_running_statistics_in_training():
    backbone = models.ResNetV1c(depth=18, base_channels=4, stem_channels=8, frozen_bn=True)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3)) * 3 + 1
    variables = models.init_variables(backbone, jax.random.key(1), images)
    train_out, updates = run_compiled(
        lambda v, x: backbone.apply(v, x, train=True, mutable=["batch_stats"]), variables, images
    )
    chex.assert_trees_all_close(updates["batch_stats"], variables["batch_stats"])
    chex.assert_trees_all_close(train_out, run_compiled(backbone.apply, variables, images))


def test_bfloat16_compute_with_float32_parameters():
    module = tasks.get_model("dnl_tiny", 5, dtype=jnp.bfloat16).module
    variables = shapes_of_init(module, (1, 32, 32, 3))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    inputs = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    outputs = jax.eval_shape(lambda v, x: module.apply(v, x), variables, inputs)
    assert outputs["logits"].dtype == jnp.bfloat16


def test_axis_name_synchronises_batch_norm_across_devices():
    """Under pmap with axis_name, each device's BN statistics are those of the whole batch."""
    bundle = tasks.get_model("dnl_tiny", 5, axis_name="batch", dropout_rate=0.0)
    single = tasks.get_model("dnl_tiny", 5, dropout_rate=0.0)
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = models.init_variables(single.module, jax.random.key(1), images)

    def train_forward(module, v, x):
        return module.apply(v, x, train=True, mutable=["batch_stats"])

    outputs, updates = run_compiled(
        lambda v, x: train_forward(single.module, v, x), variables, images
    )
    replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), variables)
    sharded_images = images.reshape(2, 2, 32, 32, 3)
    p_outputs, p_updates = (
        jax.pmap(
            lambda v, x: train_forward(bundle.module, v, x),
            axis_name="batch",
            devices=jax.devices()[:2],
        )
        .lower(replicated, sharded_images)
        .compile(compiler_options={"xla_backend_optimization_level": 0})(replicated, sharded_images)
    )
    chex.assert_trees_all_close(
        jax.tree_util.tree_map(lambda x: x[1], p_updates), updates, atol=1e-5, rtol=1e-5
    )
    np.testing.assert_allclose(
        p_outputs["logits"].reshape(outputs["logits"].shape),
        outputs["logits"],
        atol=1e-4,
        rtol=1e-4,
    )
