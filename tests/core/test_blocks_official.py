"""The official-code DNL block against a PyTorch reference written from the official source
(yinmh17/DNL-Semantic-Segmentation model/seg/ops/nonlocal_block.py `_NonLocalNd_bn` and
nonlocal_block_nowd.py `_NonLocalNd_nowd`, read, not copied), its variants, initialisers,
parameter names and counts, and its head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_reference import OfficialReference

from dnl_jax.core.blocks_official import (
    NO_DECAY_PARAMETERS,
    OFFICIAL_VARIANTS,
    OfficialDisentangledNonLocal,
)
from dnl_jax.models.heads import NOWD_WEIGHT_DECAY
from dnl_jax.tasks import get_model


def _flax_variables(module):
    """Our parameters as the reference's state_dict (1×1 kernels [1, 1, I, O] → [O, I, 1, 1])."""
    params = {}
    for name in ("conv_query", "conv_key", "conv_value", "conv_mask"):
        for leaf, value in module.state_dict().items():
            if leaf.startswith(name + "."):
                array = value.detach().numpy()
                key = "kernel" if leaf.endswith("weight") else "bias"
                if key == "kernel":
                    array = array[:, :, 0, 0].T[None, None]
                params.setdefault(name, {})[key] = jnp.asarray(array)
    params["gamma"] = jnp.asarray(module.gamma.detach().numpy())
    return {"params": params}


@pytest.mark.parametrize("variant", sorted(OFFICIAL_VARIANTS))
def test_matches_the_official_forward(variant):
    torch.manual_seed(0)
    settings = OFFICIAL_VARIANTS[variant]
    reference = OfficialReference(16, 8, **settings)
    with torch.no_grad():  # non-trivial weights: gamma and larger projections
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.3)
    x = np.random.default_rng(1).normal(size=(2, 16, 6, 5)).astype(np.float32)
    expected = reference(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    block = OfficialDisentangledNonLocal(reduction=2, implementation="xla", **settings)
    got = block.apply(_flax_variables(reference), jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert np.abs(expected - x.transpose(0, 2, 3, 1)).mean() > 0.1  # the block does something
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)


def test_parameter_names_counts_and_initialisers():
    reference = OfficialReference(512, 256, "channel", True, 0.05)  # the head's block
    torch_count = sum(p.numel() for p in reference.parameters())
    block = OfficialDisentangledNonLocal(reduction=2)
    variables = block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 512)))
    params = variables["params"]
    ours = sum(int(np.size(v)) for v in jax.tree.leaves(params))
    # query/key 512·256 + 256 each, value 512·512 (no bias), mask 512 + 1, gamma 1 = 525,314
    # (mmseg's DisentangledNonLocal2d at 512 channels: 526,593, with its conv_out and norm).
    assert ours == torch_count == 2 * (512 * 256 + 256) + 512 * 512 + 513 + 1 == 525_314
    assert set(params) == {"conv_query", "conv_key", "conv_value", "conv_mask", "gamma"}
    assert "bias" not in params["conv_value"]
    assert float(params["gamma"][0]) == 0.0
    for name in ("conv_query", "conv_key", "conv_value", "conv_mask"):
        kernel = np.asarray(params[name]["kernel"])
        assert 0.005 < kernel.std() < 0.02, name  # N(0, 0.01)
        assert not np.any(np.asarray(params[name].get("bias", 0.0)))
    # Zero gamma: the block starts as x + unary (not the identity, unlike mmseg's).
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 512))
    assert not np.allclose(block.apply(variables, x), x)


def test_head_is_selected_by_name_and_nowd_names_its_parameters():
    bundle = get_model("dnl_tiny", 7, head="dnl_official_nowd")
    variables = jax.eval_shape(bundle.module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    block = variables["params"]["decode_head"]["dnl_block"]
    paths = [
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    ]
    no_decay = [p for p in paths if any(pattern in p for pattern, _ in NOWD_WEIGHT_DECAY)]
    assert sorted({p.split("/")[-2] for p in no_decay}) == sorted(NO_DECAY_PARAMETERS)
    assert len(no_decay) == 4  # weight and bias of conv_query and conv_key
    assert set(block) == {"conv_query", "conv_key", "conv_value", "conv_mask", "gamma"}
    with pytest.raises(ValueError, match="unknown head"):
        get_model("dnl_tiny", 7, head="dnl_oficial")
