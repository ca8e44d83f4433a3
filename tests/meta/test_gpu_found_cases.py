"""The two reduced-precision false alarms the CUDA gate found (25 examples per column where the CPU
gate runs 3), both reproduced on CPU with identical figures, and what fixed each:

- Qwen2 (biased q/k/v, hidden 8): native bfloat16 error 4.70e-2 against a tolerance of 4.65e-2.
  Native added the q/k/v biases after the fused matmul had rounded to bfloat16, a second rounding
  HF's ``nn.Linear`` does not make. The bias now goes into the matmul (native/attention.py): 3.3e-2.
- Mixtral (top-1 of 3 experts): one token's router logits 0.03 apart, so bfloat16 rounding chose
  the other expert; relative error 8.8e-2 against 2.7e-2, every other position at 5e-3. Positions
  after a routing near-tie are now left out once a comparison fails (properties/routing.py); an
  expert-order bug on the same config is still rejected.
"""
from __future__ import annotations

import pytest
import torch

import converters
import native
from native import (AttentionConfig, BlockConfig, DecoderConfig, DefaultRotary, EmbeddingConfig,
                           HeadConfig, MLPConfig, ModelConfig, MoEConfig, RMSNormConfig)
from properties import PropertyViolation, forward, forward_equivalence, routing
from properties.common import export_config
from properties.violation import Reporter

from .test_broken_converters import mixtral_expert_order_reversed, mixtral_router_rows_reversed


def _model(hidden, vocab, attention, mlp, layers, tied) -> ModelConfig:
    block = BlockConfig(placement="pre", norm=RMSNormConfig(eps=1e-5), attention=attention, mlp=mlp)
    return ModelConfig(hidden_size=hidden, max_position_embeddings=8, embeddings=EmbeddingConfig(vocab_size=vocab),
                       decoder=DecoderConfig(blocks=(block,), pattern=(0,) * layers),
                       final_norm=RMSNormConfig(eps=1e-5), head=HeadConfig(tied=tied))


def _attention(heads, kv_heads, bias) -> AttentionConfig:
    return AttentionConfig(heads=heads, kv_heads=kv_heads, head_dim=2, q_bias=bias, k_bias=bias, v_bias=bias,
                           rotary=DefaultRotary(theta=10000.0))


QWEN2 = _model(8, 17, _attention(1, 1, True), MLPConfig(intermediate=1, gated=True, activation="gelu"), 3, True)
QWEN2_SEED = 1
MIXTRAL = _model(36, 52, _attention(3, 1, False), MoEConfig(experts=3, top_k=1, intermediate=1, activation="silu"),
                 2, False)
MIXTRAL_SEED = 18438


def _measure(arch, cfg, seed, converter=None):
    converter = converter or converters.get(arch)
    report = Reporter("forward_equivalence", converter)
    state = native.random_state(cfg, seed, dtype=torch.float32)
    return forward.measure_reduced(report, converter, cfg, export_config(report, converter, cfg), state, seed,
                                   torch.bfloat16)


def test_qwen2_biased_attention_within_tolerance_in_bf16():
    m = _measure("qwen2", QWEN2, QWEN2_SEED)
    assert m.ok and m.near_ties == 0, m.describe()


def test_qkv_bias_laid_out_like_the_fused_rows():
    """``_qkv_bias`` (added inside the matmul, so it rounds once like ``nn.Linear``) follows the
    ``qkv`` rows: per kv head, its group of q heads, then k, then v."""
    attention = _attention(4, 2, True)
    layer = native.attention.Attention(8, attention)
    for i, p in enumerate((layer.q_bias, layer.k_bias, layer.v_bias)):
        p.data = torch.arange(p.numel(), dtype=torch.float32) + 100 * i
    q, k, v = (b.view(-1, 2) for b in (layer.q_bias, layer.k_bias, layer.v_bias))
    expected = torch.cat([q[0], q[1], k[0], v[0], q[2], q[3], k[1], v[1]])
    assert torch.equal(layer._qkv_bias(torch.zeros(1, 8)), expected)
    layer.k_bias = None
    assert torch.equal(layer._qkv_bias(torch.zeros(1, 8)).view(2, 4, 2)[:, 2], torch.zeros(2, 2))


def test_mixtral_routing_near_tie_left_out():
    m = _measure("mixtral", MIXTRAL, MIXTRAL_SEED)
    assert m.ok and 0 < m.near_ties, m.describe()
    forward_equivalence(converters.get("mixtral"), MIXTRAL, MIXTRAL_SEED, dtypes=("bfloat16",))


def test_mixtral_near_tie_fails_without_the_exclusion(monkeypatch):
    """The case is real: judged on every position, the correct converter fails."""
    monkeypatch.setattr(routing, "has_routing", lambda cfg: False)
    m = _measure("mixtral", MIXTRAL, MIXTRAL_SEED)
    assert not m.ok and m.margin > 3, m.describe()


def test_expert_bug_still_rejected_on_the_near_tie_config():
    with pytest.raises(PropertyViolation, match="near-tie left out"):
        forward_equivalence(mixtral_expert_order_reversed(), MIXTRAL, MIXTRAL_SEED, dtypes=("bfloat16",))


def test_router_bug_still_rejected_on_the_near_tie_config():
    """Router rows reversed on export: every routing decision of HF differs, ties or not."""
    with pytest.raises(PropertyViolation):
        forward_equivalence(mixtral_router_rows_reversed(), MIXTRAL, MIXTRAL_SEED, dtypes=("bfloat16",))


# --------------------------------------------------------------------- properties/routing.py
def test_affected_positions_spread_after_early_layers_only():
    tie = torch.zeros(2, 6, dtype=torch.bool)
    tie[0, 2] = True
    early = routing.affected_positions({0: tie}, layers=3, shape=(2, 6))
    last = routing.affected_positions({2: tie}, layers=3, shape=(2, 6))
    assert early[0].tolist() == [False, False, True, True, True, True] and not early[1].any()
    assert last[0].tolist() == [False, False, True, False, False, False] and not last[1].any()
    assert not routing.affected_positions({}, layers=3, shape=(2, 6)).any()


def _router_state(cfg, rows):
    state = native.random_state(cfg, 0, dtype=torch.float32)
    for name in state:
        if name.endswith("router.weight"):
            state[name] = rows(state[name])
    return state


def test_identical_router_rows_tie_everywhere():
    cfg = MIXTRAL
    ids = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    same = _router_state(cfg, lambda w: w[:1].expand_as(w).clone())
    ties = routing.router_near_ties(cfg, same, ids, mask, band=lambda layer: 0.0)
    assert set(ties) == {0, 1} and all(t.all() for t in ties.values())
    apart = _router_state(cfg, lambda w: w * torch.arange(1, w.shape[0] + 1, dtype=w.dtype)[:, None] * 10)
    ties = routing.router_near_ties(cfg, apart, ids, mask, band=lambda layer: 0.0)
    assert not any(t.any() for t in ties.values())


def test_every_expert_chosen_has_no_ties():
    cfg = _model(8, 17, _attention(1, 1, False), MoEConfig(experts=2, top_k=2, intermediate=1), 2, True)
    assert not routing.has_routing(cfg)
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert routing.router_near_ties(cfg, native.random_state(cfg, 0), ids, torch.ones_like(ids),
                                    band=lambda layer: 1.0) == {}
