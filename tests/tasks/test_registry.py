"""The model registry through `tasks.get_model`: every name builds a bundle of its task, every
segmentor maps images to logits (abstractly), summaries, and the errors for unknown names,
overrides and inputs."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from model_testing import shapes_of_init

from dnl_jax import models, tasks

# ---------------------------------------------------------------------------------------------
# Registry and input validation.
# ---------------------------------------------------------------------------------------------


def test_registry_names_and_bundle_fields():
    required = {
        "dnl_tiny",
        "dnl_r18-d8",
        "dnl_r50-d8",
        "dnl_r101-d8",
        "nl_r50-d8",
        "nl_r101-d8",
        "fcn_r50-d8",
        "fcn_r101-d8",
        "gc_r50-d8",
        "dnl_i3d_r50",
        "nl_i3d_r50",
        "dnl_c2d_r50",
        "dnl_i3d_tiny",
    }
    assert required <= set(tasks.MODEL_NAMES)
    for name in tasks.MODEL_NAMES:
        bundle = tasks.get_model(name, num_classes=3)
        is_video = "3d" in name or "c2d" in name
        task = (
            "detection"
            if name.startswith("mask_rcnn")
            else ("video" if is_video else "segmentation")
        )
        assert bundle.task == task
        assert bundle.num_classes == 3 and bundle.name == name


@pytest.mark.parametrize(
    "name", [n for n in tasks.MODEL_NAMES if n.startswith(("dnl_r", "nl_r", "fcn_r", "gc_r"))]
)
def test_every_registered_segmentor_maps_images_to_logits_abstractly(name):
    # Each name's head and wiring, on a shallow narrow trunk (full sizes are tested above).
    module = tasks.get_model(
        name, num_classes=4, depth=18, base_channels=4, stem_channels=8, channels=8, aux_channels=4
    ).module
    inputs = jax.ShapeDtypeStruct((1, 33, 47, 3), jnp.float32)
    variables = shapes_of_init(module, inputs.shape)
    outputs, _ = jax.eval_shape(
        lambda v, x: module.apply(
            v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
        ),
        variables,
        inputs,
    )
    assert {k: v.shape for k, v in outputs.items()} == {
        "logits": (1, 33, 47, 4),
        "aux_logits": (1, 33, 47, 4),
    }


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
