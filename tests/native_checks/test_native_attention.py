"""Attention, from the maths: grouped KV equals MHA with duplicated heads, the window and mask
conventions, softcap/scale/qk-norm semantics, and finite outputs for fully masked rows."""
from __future__ import annotations

import pytest
import torch

from native import RMSNormConfig
from native.attention import Attention, visibility_mask
from native.rotary import rotary_table

from native_cases import HIDDEN, attention, rel

T = 12


def _randomized(module: Attention, seed: int = 0) -> Attention:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name else torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return module.double()


def _run(module: Attention, x: torch.Tensor, key_padding=None) -> torch.Tensor:
    a = module.cfg
    table = rotary_table(a.rotary, a.head_dim, 64, x.shape[1], x.dtype)
    return module(x, table, visibility_mask(x.shape[1], a.window, key_padding))


def _x(batch=2, seed=1):
    return torch.randn(batch, T, HIDDEN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_visibility_mask_convention():
    allowed = visibility_mask(6, 3, None)[0, 0]
    for i in range(6):
        for j in range(6):
            assert bool(allowed[i, j]) == (i - 3 < j <= i)
    padded = visibility_mask(4, None, torch.tensor([[1, 1, 0, 1]]))[0, 0]
    assert not padded[:, 2].any() and padded[3, 3] and padded[3, 0]


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_kv_equals_mha_with_duplicated_kv_heads(kv_heads):
    gqa = _randomized(Attention(HIDDEN, attention(heads=4, kv_heads=kv_heads, k_bias=True, v_bias=True, q_bias=True)))
    mha = Attention(HIDDEN, attention(heads=4, kv_heads=4, k_bias=True, v_bias=True, q_bias=True)).double()
    a, d = gqa.cfg, gqa.cfg.head_dim
    rows = gqa.qkv.weight.view(a.kv_heads, a.group + 2, d, HIDDEN)
    k_bias, v_bias = gqa.k_bias.view(a.kv_heads, d), gqa.v_bias.view(a.kv_heads, d)
    with torch.no_grad():
        # MHA groups are single heads: [q_h; k_{h // group}; v_{h // group}]
        mha.qkv.weight.copy_(torch.stack([torch.stack([rows[h // a.group, h % a.group], rows[h // a.group, a.group], rows[h // a.group, a.group + 1]])
                                          for h in range(a.heads)]).reshape(-1, HIDDEN))
        mha.q_bias.copy_(gqa.q_bias)
        mha.k_bias.copy_(k_bias.repeat_interleave(a.group, 0).flatten())
        mha.v_bias.copy_(v_bias.repeat_interleave(a.group, 0).flatten())
        mha.o.weight.copy_(gqa.o.weight)
    x = _x()
    torch.testing.assert_close(_run(mha, x), _run(gqa, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [T, T + 5, 1000])
def test_window_at_least_sequence_length_is_full_attention(window):
    full = _randomized(Attention(HIDDEN, attention()))
    windowed = Attention(HIDDEN, attention(window=window)).double()
    windowed.load_state_dict(full.state_dict())
    x = _x()
    assert torch.equal(_run(windowed, x), _run(full, x))


def test_window_one_attends_to_self_only():
    module = _randomized(Attention(HIDDEN, attention(window=1)))
    x = _x()
    v = module.qkv(x).view(2, T, 2, 4, 8)[..., 3, :]  # v of each kv head
    expected = module.o(v.repeat_interleave(2, dim=2).flatten(-2))
    torch.testing.assert_close(_run(module, x), expected, rtol=1e-12, atol=1e-12)


def test_smaller_window_changes_late_positions_only():
    full = _randomized(Attention(HIDDEN, attention()))
    windowed = Attention(HIDDEN, attention(window=4)).double()
    windowed.load_state_dict(full.state_dict())
    x = _x()
    a, b = _run(full, x), _run(windowed, x)
    assert torch.equal(a[:, :4], b[:, :4])
    assert rel(b[:, 4:], a[:, 4:]) > 1e-3


def test_default_softmax_scale_is_inverse_sqrt_head_dim():
    default = _randomized(Attention(HIDDEN, attention()))
    explicit = Attention(HIDDEN, attention(softmax_scale=8 ** -0.5)).double()
    explicit.load_state_dict(default.state_dict())
    x = _x()
    assert torch.equal(_run(default, x), _run(explicit, x))


def test_softcap_is_tanh_of_scaled_scores():
    plain = _randomized(Attention(HIDDEN, attention()))
    huge = Attention(HIDDEN, attention(logit_softcap=1e6)).double()
    tiny = Attention(HIDDEN, attention(logit_softcap=1e-6)).double()
    huge.load_state_dict(plain.state_dict())
    tiny.load_state_dict(plain.state_dict())
    x = _x()
    torch.testing.assert_close(_run(huge, x), _run(plain, x), rtol=1e-9, atol=1e-9)
    # a vanishing cap flattens the scores: uniform attention over the visible keys
    v = plain.qkv(x).view(2, T, 2, 4, 8)[..., 3, :].repeat_interleave(2, dim=2)
    causal_mean = v.cumsum(1) / torch.arange(1, T + 1, dtype=torch.float64)[None, :, None, None]
    torch.testing.assert_close(_run(tiny, x), plain.o(causal_mean.flatten(-2)), rtol=1e-6, atol=1e-6)


def test_full_and_head_qk_norm_agree_for_a_single_head():
    norm = RMSNormConfig(1e-6)
    head = _randomized(Attention(HIDDEN, attention(heads=1, kv_heads=1, qk_norm=norm, qk_norm_scope="head")))
    full = Attention(HIDDEN, attention(heads=1, kv_heads=1, qk_norm=norm, qk_norm_scope="full")).double()
    full.load_state_dict(head.state_dict())
    x = _x()
    torch.testing.assert_close(_run(full, x), _run(head, x), rtol=1e-12, atol=1e-12)


def test_full_qk_norm_differs_from_per_head_with_several_heads():
    norm = RMSNormConfig(1e-6)
    full = _randomized(Attention(HIDDEN, attention(qk_norm=norm, qk_norm_scope="full")))
    head = Attention(HIDDEN, attention(qk_norm=norm, qk_norm_scope="head")).double()
    state = full.state_dict()
    state["q_norm.weight"], state["k_norm.weight"] = state["q_norm.weight"][:8], state["k_norm.weight"][:8]
    head.load_state_dict(state)
    x = _x()
    assert rel(_run(full, x), _run(head, x)) > 1e-3


@pytest.mark.parametrize("window", [None, 3])
def test_fully_masked_rows_stay_finite(window):
    module = _randomized(Attention(HIDDEN, attention(window=window)))
    padding = torch.ones(2, T, dtype=torch.long)
    padding[0, :5] = 0  # left padding: queries 0..4 of row 0 see no key at all
    padding[1] = 0
    assert torch.isfinite(_run(module, _x(), padding)).all()


def test_padding_keys_are_ignored():
    module = _randomized(Attention(HIDDEN, attention()))
    x = _x(1)
    padding = torch.ones(1, T, dtype=torch.long)
    padding[0, 3] = 0
    changed = x.clone()
    changed[0, 3] += 10.0
    a, b = _run(module, x, padding), _run(module, changed, padding)
    torch.testing.assert_close(a[:, 4:], b[:, 4:], rtol=1e-12, atol=1e-12)
