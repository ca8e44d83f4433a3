"""The model's state dict is the layout contract, and ``random_state`` fills it with values that make
every single tensor matter."""
from __future__ import annotations

import pytest
import torch

from native import NativeModel, random_state, state_shapes

from native_cases import CONFIGS, built, rel, tokens


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_is_the_layout(name):
    cfg = CONFIGS[name]
    with torch.device("meta"):
        state = NativeModel(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == state_shapes(cfg)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_state_is_deterministic_and_loads(name):
    cfg = CONFIGS[name]
    a, b, c = random_state(cfg, 7), random_state(cfg, 7), random_state(cfg, 8)
    assert {k: tuple(v.shape) for k, v in a.items()} == state_shapes(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)
    NativeModel(cfg).load_state_dict(a, strict=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_state_has_no_default_values(name):
    for key, value in random_state(CONFIGS[name], 0).items():
        assert value.dtype == torch.float32
        if "norm.weight" in key:
            assert (value != 1).all() and (value - 1).abs().max() < 1, key
        elif key.endswith("bias"):
            assert (value != 0).all(), key


def test_random_state_dtype():
    state = random_state(CONFIGS["llama"], 0, dtype=torch.bfloat16)
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    exact = random_state(CONFIGS["llama"], 0, dtype=torch.float64)
    assert all(torch.equal(exact[k].float(), random_state(CONFIGS["llama"], 0)[k]) for k in exact)


@pytest.mark.parametrize("name", ["llama", "sandwich_gemma", "parallel_neox", "post_full_qk_norm", "moe_shared_gate", "llama_tied"])
def test_logits_are_order_one(name):
    logits = built(CONFIGS[name])(tokens(2, 24))
    assert 0.3 < logits.std().item() < 5


@pytest.mark.parametrize("name", ["mha_biases", "sandwich_gemma", "parallel_neox", "post_full_qk_norm", "moe_shared_gate", "layernorm_qk_norm"])
def test_every_tensor_visibly_changes_the_logits(name):
    """Resetting any one tensor to its default (norm 1, bias 0) or redrawing it moves the logits."""
    cfg = CONFIGS[name]
    state = random_state(cfg, 0, dtype=torch.float64)
    m = NativeModel(cfg).double()
    m.load_state_dict(state)
    ids = tokens(2, 16)
    reference = m(ids)
    other = random_state(cfg, 1, dtype=torch.float64)
    for key in state:
        if "norm.weight" in key:
            replacement = torch.ones_like(state[key])
        elif key.endswith("bias"):
            replacement = torch.zeros_like(state[key])
        else:
            replacement = other[key]
        m.load_state_dict({**state, key: replacement})
        assert rel(m(ids), reference) > 1e-3, key
