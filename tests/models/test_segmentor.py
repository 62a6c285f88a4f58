"""Tests of dnl_jax.models: parameter counts against the PyTorch references, shapes, the bundle
contract (loss, OHEM, confusion matrix) and input validation. Big models only go through
`jax.eval_shape` (no memory, no compile); real runs use tiny widths."""

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dnl_jax import models, tasks
from dnl_jax.models import losses

# Reference counts from mmseg/mmcv (shared/DESIGN.md), `params` only.
RESNET_V1C_PARAMS = {50: 23_527_264, 101: 42_519_392}
DNL_HEAD_2048_TO_512_19 = 24_132_372
FCN_AUX_HEAD_1024_TO_256_19 = 2_364_691


def shapes_of_init(module, input_shape, **kwargs):
    """Variables of `module` as ShapeDtypeStructs (nothing is allocated or compiled)."""
    inputs = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), inputs)


def compile_for(fn, *args):
    """`fn` jit-compiled for arguments shaped like `args`, without XLA's backend optimisation
    (about 4x faster to compile on CPU; these tests check values, not speed)."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def run_compiled(fn, *args):
    return compile_for(fn, *args)(*args)


def flat_names(tree) -> set:
    return {"/".join(path) for path in flax.traverse_util.flatten_dict(tree)}


@pytest.fixture(scope="module")
def tiny():
    """The registered tiny segmentor (5 classes) and its initialised variables."""
    bundle = tasks.get_model("dnl_tiny", num_classes=5)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = models.init_variables(bundle.module, jax.random.key(1), images)
    return bundle, variables


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
@pytest.mark.parametrize("depth, torchvision_trunk", [(18, 11_176_512), (34, 21_284_672),
                                                      (152, 58_143_808)])
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
        "backbone/stem_0/kernel", "backbone/stem_1/scale", "backbone/stem_3/kernel",
        "backbone/stem_6/kernel", "backbone/stem_7/bias", "backbone/layer1_0/conv1/kernel",
        "backbone/layer2_0/downsample_0/kernel", "backbone/layer2_0/downsample_1/scale",
        "decode_head/convs_0/conv/kernel", "decode_head/convs_1/bn/scale",
        "decode_head/dnl_block/theta/conv/kernel", "decode_head/dnl_block/conv_mask/kernel",
        "decode_head/dnl_block/conv_out/conv/kernel", "decode_head/conv_cat/conv/kernel",
        "decode_head/conv_seg/kernel", "decode_head/conv_seg/bias",
        "auxiliary_head/convs_0/conv/kernel", "auxiliary_head/conv_seg/kernel",
    }
    assert expected_params <= params, expected_params - params
    assert {"backbone/stem_1/mean", "backbone/layer1_0/bn1/var",
            "decode_head/dnl_block/conv_out/bn/mean"} <= stats


# ---------------------------------------------------------------------------------------------
# Shapes.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_stride, strides", [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16)),
                                                    (32, (4, 8, 16, 32))])
def test_output_stride_sets_stage_resolutions(output_stride, strides):
    backbone = models.ResNetV1c(depth=18, base_channels=4, stem_channels=8,
                                output_stride=output_stride)
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
    assert [s.shape for s in stages] == [(1, 25, 33, 8), (1, 13, 17, 16), (1, 13, 17, 32),
                                         (1, 13, 17, 64)]


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
            {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True,
            rngs={"dropout": jax.random.key(5)}, mutable=["batch_stats"],
        )
        loss, scalars = bundle.loss_fn(outputs, batch)
        return loss, (outputs, updates, scalars)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    (loss, (outputs, updates, scalars)), grads = run_compiled(grad_fn, variables["params"])
    chex.assert_shape([outputs["logits"], outputs["aux_logits"]], (2, 32, 32, 5))
    assert set(scalars) == {"loss", "decode_loss", "aux_loss", "pixel_accuracy",
                            "out_of_range_labels"}
    np.testing.assert_allclose(loss, scalars["decode_loss"] + 0.4 * scalars["aux_loss"], rtol=1e-6)
    assert set(updates) == {"batch_stats"}
    assert not np.allclose(updates["batch_stats"]["backbone"]["stem_1"]["mean"], 0.0)
    stepped = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, variables["params"], grads)
    (new_loss, _), _ = run_compiled(grad_fn, stepped)
    assert new_loss < loss


# ---------------------------------------------------------------------------------------------
# Loss, OHEM and metrics against NumPy.
# ---------------------------------------------------------------------------------------------


def numpy_cross_entropy(logits, labels, keep, weights=None):
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    safe = np.clip(labels, 0, logits.shape[-1] - 1)
    nll = -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
    w = keep.astype(np.float64) * (1.0 if weights is None else np.asarray(weights)[safe])
    return (w * nll).sum() / w.sum()


def random_logits_labels(seed, shape=(2, 6, 7), num_classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape + (num_classes,)).astype(np.float32) * 2
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < 0.3] = 255
    return logits, labels


def test_loss_ignores_255_and_matches_numpy():
    logits, labels = random_logits_labels(0)
    keep = labels != 255
    loss = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(loss, numpy_cross_entropy(logits, labels, keep), rtol=1e-5)
    # Whatever the network predicts at ignored pixels, the loss is the same.
    noise = 50.0 * np.random.default_rng(1).normal(size=logits.shape)
    changed = np.where(keep[..., None], logits, noise)
    changed_loss = losses.pixel_cross_entropy(jnp.asarray(changed), jnp.asarray(labels))
    np.testing.assert_allclose(changed_loss, loss, rtol=1e-6)
    weights = [0.5, 1.0, 2.0, 0.1]
    weighted = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                          class_weights=weights)
    np.testing.assert_allclose(weighted, numpy_cross_entropy(logits, labels, keep, weights),
                               rtol=1e-5)


def numpy_ohem_keep(logits, labels, thresh, min_kept):
    """The official OhemCrossEntropy2d selection, applied to each image on its own."""
    return np.stack([numpy_ohem_keep_batch(logits[i:i + 1], labels[i:i + 1], thresh, min_kept)[0]
                     for i in range(len(labels))])


def numpy_ohem_keep_batch(logits, labels, thresh, min_kept):
    """The official OhemCrossEntropy2d selection over a batch, with a NumPy sort."""
    valid = labels != 255
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    p_true = np.take_along_axis(probs, np.clip(labels, 0, 3)[..., None], -1)[..., 0]
    if min_kept > valid.sum():
        return valid
    threshold = thresh
    if min_kept > 0:
        ranked = np.sort(p_true[valid])
        threshold = max(thresh, ranked[min(len(ranked), min_kept) - 1])
    return valid & (p_true <= threshold)


@pytest.mark.parametrize("thresh, min_kept", [(0.7, 0), (0.3, 10), (0.05, 40), (0.7, 10_000)])
def test_ohem_keeps_hard_pixels_and_at_least_min_kept(thresh, min_kept):
    logits, labels = random_logits_labels(2)
    valid = labels != 255
    keep = np.asarray(losses.ohem_keep_mask(jnp.asarray(logits), jnp.asarray(labels),
                                            jnp.asarray(valid), thresh, min_kept))
    np.testing.assert_array_equal(keep, numpy_ohem_keep(logits, labels, thresh, min_kept))
    for image_keep, image_valid in zip(keep, valid):  # min_kept holds per image
        assert image_keep.sum() >= min(min_kept, image_valid.sum())
    assert not keep[~valid].any()
    loss = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                      ohem=dict(thresh=thresh, min_kept=min_kept))
    np.testing.assert_allclose(loss, numpy_cross_entropy(logits, labels, keep), rtol=1e-5)


def test_confusion_matrix_matches_numpy_count():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=(3, 9, 11))
    labels[rng.random(labels.shape) < 0.2] = 255
    labels[0, 0, :3] = 7  # out of range: excluded like the ignore label
    predictions = rng.integers(0, 5, size=labels.shape)
    expected = np.zeros((5, 5), np.int64)
    for t, p in zip(labels.ravel(), predictions.ravel()):
        if t < 5:
            expected[t, p] += 1
    got = losses.confusion_matrix(jnp.asarray(predictions), jnp.asarray(labels), 5)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, expected)


def test_bundle_metrics_fn_confusion_of_argmax(tiny):
    bundle, _ = tiny
    logits, labels = random_logits_labels(4, num_classes=5)
    metrics = bundle.metrics_fn({"logits": jnp.asarray(logits)}, {"label": jnp.asarray(labels)})
    expected = losses.confusion_matrix(jnp.argmax(logits, -1), jnp.asarray(labels), 5)
    np.testing.assert_array_equal(metrics["confusion"], expected)
    assert metrics["confusion"].sum() == (labels != 255).sum()


# ---------------------------------------------------------------------------------------------
# Registry and input validation.
# ---------------------------------------------------------------------------------------------


def test_registry_names_and_bundle_fields():
    required = {"dnl_tiny", "dnl_r18-d8", "dnl_r50-d8", "dnl_r101-d8", "nl_r50-d8",
                "nl_r101-d8", "fcn_r50-d8", "fcn_r101-d8", "gc_r50-d8", "dnl_i3d_r50",
                "nl_i3d_r50", "dnl_c2d_r50", "dnl_i3d_tiny"}
    assert required <= set(tasks.MODEL_NAMES)
    for name in tasks.MODEL_NAMES:
        bundle = tasks.get_model(name, num_classes=3)
        is_video = "3d" in name or "c2d" in name
        task = "detection" if name.startswith("mask_rcnn") else (
            "video" if is_video else "segmentation")
        assert bundle.task == task
        assert bundle.num_classes == 3 and bundle.name == name


@pytest.mark.parametrize("name", [n for n in tasks.MODEL_NAMES if n.startswith(("dnl_r", "nl_r",
                                                                                "fcn_r", "gc_r"))])
def test_every_registered_segmentor_maps_images_to_logits_abstractly(name):
    # Each name's head and wiring, on a shallow narrow trunk (full sizes are tested above).
    module = tasks.get_model(name, num_classes=4, depth=18, base_channels=4, stem_channels=8,
                              channels=8, aux_channels=4).module
    inputs = jax.ShapeDtypeStruct((1, 33, 47, 3), jnp.float32)
    variables = shapes_of_init(module, inputs.shape)
    outputs, _ = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                                  mutable=["batch_stats"]), variables, inputs)
    assert {k: v.shape for k, v in outputs.items()} == {"logits": (1, 33, 47, 4),
                                                        "aux_logits": (1, 33, 47, 4)}


def test_summary_counts_parameters_and_flops():
    lines = []
    small = tasks.summary("dnl_tiny", (1, 32, 32, 3), num_classes=5, print_fn=lines.append)
    large = tasks.summary("dnl_tiny", (1, 64, 64, 3), num_classes=5, print_fn=lines.append)
    variables = shapes_of_init(tasks.get_model("dnl_tiny", 5).module, (1, 32, 32, 3))
    assert small["params"] == large["params"] == models.count_params(variables["params"])
    assert sum(small["params_by_module"].values()) == small["params"]
    # Convolutions dominate: 4x the pixels, at least 4x the FLOPs (attention grows faster).
    assert small["flops"] > 0 and large["flops"] >= 4 * small["flops"]
    assert any("total" in line for line in lines)


def test_unknown_model_name_and_override_raise():
    with pytest.raises(ValueError, match="unknown model 'dnl_r77'.*dnl_r50-d8"):
        tasks.get_model("dnl_r77", 19)
    with pytest.raises(ValueError, match="unknown override.*'learning_rate'.*valid.*output_stride"):
        tasks.get_model("dnl_tiny", 19, learning_rate=0.1)
    with pytest.raises(ValueError, match="ohem must be None or dict"):
        tasks.get_model("dnl_tiny", 19, ohem=dict(thresh=0.7))
    with pytest.raises(ValueError, match="class_weights needs 19"):
        tasks.get_model("dnl_tiny", 19, class_weights=[1.0, 2.0])


def test_overrides_accept_config_values():
    ohem = ml_collections.ConfigDict({"thresh": 0.7, "min_kept": 100_000})
    bundle = tasks.get_model("dnl_tiny", 5, ohem=ohem, dtype="bfloat16", aux=False)
    assert bundle.config["ohem"] == {"thresh": 0.7, "min_kept": 100_000}
    variables = shapes_of_init(bundle.module, (1, 32, 32, 3))
    assert set(variables["params"]) == {"backbone", "decode_head"}  # aux=False: no aux head
    with pytest.raises(ValueError, match="aux_weight must be a number >= 0"):
        tasks.get_model("dnl_tiny", 5, aux_weight=-1.0)
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
        tasks.get_model("dnl_tiny", 5, dropout_rate=1.0)


@pytest.mark.parametrize("output_stride", [4, 12, 64])
def test_output_stride_outside_8_16_32_raises(output_stride):
    with pytest.raises(ValueError, match=r"output_stride must be one of \[8, 16, 32\]"):
        tasks.get_model("dnl_tiny", 5, output_stride=output_stride)


def test_wrong_channel_count_raises():
    module = tasks.get_model("dnl_tiny", 5).module
    with pytest.raises(ValueError, match="expected 3 input channels"):
        shapes_of_init(module, (1, 32, 32, 4))
    with pytest.raises(ValueError, match="rank 4"):
        shapes_of_init(module, (32, 32, 3))


def test_two_dimensional_input_to_video_model_raises():
    module = tasks.get_model("dnl_i3d_tiny", 5).module
    with pytest.raises(ValueError, match=r"clips \[B, T, H, W, 3\] \(rank 5\)"):
        shapes_of_init(module, (1, 32, 32, 3))


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
    return models.ResNetV1c(depth=18, base_channels=4, stem_channels=8, context=spec,
                            context_block_indices=((), (), (-1,), ()))


def test_context_block_placements_in_the_backbone():
    images = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    after_add_net, after_block_net, before_add_net = map(
        backbone_with_block, ("after_add", "after_block", "before_add"))
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

    outputs, updates = run_compiled(lambda v, x: train_forward(single.module, v, x),
                                    variables, images)
    replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), variables)
    sharded_images = images.reshape(2, 2, 32, 32, 3)
    p_outputs, p_updates = jax.pmap(
        lambda v, x: train_forward(bundle.module, v, x), axis_name="batch",
        devices=jax.devices()[:2],
    ).lower(replicated, sharded_images).compile(
        compiler_options={"xla_backend_optimization_level": 0}
    )(replicated, sharded_images)
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[1], p_updates), updates,
                                atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(p_outputs["logits"].reshape(outputs["logits"].shape),
                               outputs["logits"], atol=1e-4, rtol=1e-4)
