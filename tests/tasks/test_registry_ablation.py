"""Tests of the ablation models (`*_tiny` family, `head`/`pairwise`/`unary` overrides) and the
synthetic ablation configs. Shapes only through `jax.eval_shape` (nothing compiled)."""

import importlib.util
import os

import flax
import jax
import jax.numpy as jnp
import pytest

from dnl_jax import tasks
from dnl_jax.recipes.ablation import SYNTHETIC_ABLATION_MODELS, synthetic_config
from dnl_jax.train.config import validate_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")
IMAGE = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)


def param_names(bundle) -> set:
    variables = jax.eval_shape(
        lambda x: bundle.module.init(jax.random.key(0), x, train=False), IMAGE
    )
    return {"/".join(p) for p in flax.traverse_util.flatten_dict(variables["params"])}


def head_names(names: set) -> set:
    return {n for n in names if n.startswith("decode_head/")}


def test_ablations_share_everything_but_the_context_block():
    reference = param_names(tasks.get_model("dnl_tiny", 5))
    trunk = {n for n in reference if not n.startswith("decode_head/")}
    for name in SYNTHETIC_ABLATION_MODELS.values():
        names = param_names(tasks.get_model(name, 5))
        assert {n for n in names if not n.startswith("decode_head/")} == trunk, name


def test_pairwise_and_unary_only_drop_exactly_their_parameters():
    full = head_names(param_names(tasks.get_model("dnl_tiny", 5)))
    pairwise = head_names(param_names(tasks.get_model("dnl_pairwise_tiny", 5)))
    unary = head_names(param_names(tasks.get_model("dnl_unary_tiny", 5)))
    mask = {n for n in full if "/dnl_block/conv_mask/" in n}
    query_key = {n for n in full if "/dnl_block/theta/" in n or "/dnl_block/phi/" in n}
    assert mask and query_key
    assert pairwise == full - mask  # names of what remains are unchanged
    assert unary == full - query_key


@pytest.mark.parametrize("head, block", [("fcn", None), ("nl", "nl_block"), ("gc", "gc_block")])
def test_registered_tiny_heads_equal_the_head_override(head, block):
    registered = param_names(tasks.get_model(f"{head}_tiny", 5))
    assert registered == param_names(tasks.get_model("dnl_tiny", 5, head=head))
    blocks = {n.split("/")[1] for n in head_names(registered) if n.split("/")[1].endswith("_block")}
    assert blocks == ({block} if block else set())


def test_overrides_reach_the_dnl_block():
    block = tasks.get_model("dnl_tiny", 5, unary=False).module.decode_head
    assert (block.pairwise, block.unary) == (True, False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pairwise=False, unary=False), "both False"),
        (dict(head="fcn", unary=False), "'dnl' head only"),
        (dict(pairwise="no"), "True or False"),
        (dict(head="aspp"), "unknown head"),
    ],
)
def test_bad_ablation_overrides_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        tasks.get_model("dnl_tiny", 5, **overrides)


def load_config(path):
    spec = importlib.util.spec_from_file_location("ablation_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(), module.__doc__


@pytest.mark.parametrize("head", sorted(SYNTHETIC_ABLATION_MODELS))
def test_synthetic_configs_differ_only_in_the_model(head):
    name = f"synthetic_{head}_tiny"
    config, doc = load_config(os.path.join(CONFIG_DIR, f"{name}.py"))
    validate_config(config, tasks.for_dataset(config.data.name), num_devices=1, num_processes=1)
    assert f"--config experiments/configs/{name}.py" in doc  # the launch command
    assert config.model.name == SYNTHETIC_ABLATION_MODELS[head]
    expected = synthetic_config(SYNTHETIC_ABLATION_MODELS[head])
    assert config.to_dict() == expected.to_dict()
    demo = synthetic_config().to_dict()
    assert {k: v for k, v in config.to_dict().items() if k != "model"} == {
        k: v for k, v in demo.items() if k != "model"
    }
