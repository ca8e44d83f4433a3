"""The DeepSeek pieces of the native model against naive loops written from the formulas: multi-head
latent attention (rope only on the rope parts, one shared rotary key, DeepSeek's softmax scale) and
DeepSeekMoE routing (scores, score bias, groups, scaling); MTP layers are carried but never run;
the new sections serialise losslessly."""
from __future__ import annotations

import math

import pytest
import torch

import native
from native import ConfigError, DeepSeekMoEConfig, MLAConfig, YarnRotary
from native.deepseek_moe import Router
from native.layout import MTP_KEY
from native.mla import MLA
from native.rotary import inv_freq, rotary_table


def _rotate_pairs(x: torch.Tensor, position: int, freqs: torch.Tensor, scaling: float) -> torch.Tensor:
    """Interleaved pairs (2j, 2j+1) turned by ``position * freqs[j]``, written with cos/sin."""
    out = x.clone()
    for j, f in enumerate(freqs.tolist()):
        c, s = math.cos(position * f) * scaling, math.sin(position * f) * scaling
        a, b = x[2 * j].item(), x[2 * j + 1].item()
        out[2 * j], out[2 * j + 1] = a * c - b * s, a * s + b * c
    return out


def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("q_lora,rotary", [
    (None, native.DefaultRotary(theta=100.0)),
    (6, YarnRotary(theta=50.0, factor=4.0, original_max_position_embeddings=4, mscale=0.7, mscale_all_dim=0.9)),
])
def test_mla_matches_a_loop_over_heads_and_positions(q_lora, rotary):
    cfg = MLAConfig(heads=3, q_lora_rank=q_lora, kv_lora_rank=5, qk_nope_head_dim=4, qk_rope_head_dim=4,
                    v_head_dim=3, bias=q_lora is not None, rotary=rotary)
    H, T = 10, 7
    torch.manual_seed(0)
    attn = MLA(H, cfg).double()
    for p in attn.parameters():
        p.data.normal_()
    x = torch.randn(1, T, H, dtype=torch.float64)
    freqs, scaling = inv_freq(rotary, cfg.head_dim, 16, T)
    table = rotary_table(rotary, cfg.head_dim, 16, T, torch.float64)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    ours = attn(x, table, allowed)[0]

    nope, rope, v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    scale = (nope + rope) ** -0.5
    if isinstance(rotary, YarnRotary):
        m = 0.1 * rotary.mscale_all_dim * math.log(rotary.factor) + 1
        scale *= m * m
    q_all = attn.q(x[0]) if q_lora is None else attn.q_up(_rms(attn.q_down(x[0]), attn.q_norm.weight, cfg.lora_norm_eps))
    kv = attn.kv_down(x[0])
    latent, k_rope = kv[:, :cfg.kv_lora_rank], kv[:, cfg.kv_lora_rank:]
    expanded = attn.kv_up(_rms(latent, attn.kv_norm.weight, cfg.lora_norm_eps))
    heads_out = []
    for h in range(cfg.heads):
        q_h = q_all[:, h * (nope + rope):(h + 1) * (nope + rope)]
        kv_h = expanded[:, h * (nope + v_dim):(h + 1) * (nope + v_dim)]
        rows = []
        for i in range(T):
            q = torch.cat((q_h[i, :nope], _rotate_pairs(q_h[i, nope:], i, freqs, scaling)))
            scores = []
            for j in range(i + 1):
                k = torch.cat((kv_h[j, :nope], _rotate_pairs(k_rope[j], j, freqs, scaling)))
                scores.append((q @ k) * scale)
            p = torch.softmax(torch.stack(scores), 0)
            rows.append(sum(p[j] * kv_h[j, nope:] for j in range(i + 1)))
        heads_out.append(torch.stack(rows))
    expected = attn.o(torch.cat(heads_out, dim=-1))
    assert torch.allclose(ours, expected, rtol=1e-10, atol=1e-12)


def _route_one(c: DeepSeekMoEConfig, logits: torch.Tensor, bias: torch.Tensor):
    scores = torch.softmax(logits, 0) if c.scoring == "softmax" else torch.sigmoid(logits)
    choice = scores + bias if c.score_bias else scores.clone()
    per = c.experts // c.groups
    group_score = [sorted(choice[g * per:(g + 1) * per].tolist(), reverse=True) for g in range(c.groups)]
    group_score = [s[0] if c.group_score == "max" else s[0] + s[1] for s in group_score]
    kept = sorted(range(c.groups), key=lambda g: -group_score[g])[:c.top_groups] if c.groups > 1 else [0]
    candidates = [e for e in range(c.experts) if e // per in kept]
    chosen = sorted(candidates, key=lambda e: -choice[e].item())[:c.top_k]
    weights = torch.stack([scores[e] for e in chosen])
    if c.normalize_top_k:
        weights = weights / weights.sum()
    return {e: w.item() * c.scaling_factor for e, w in zip(chosen, weights)}


@pytest.mark.parametrize("cfg", [
    DeepSeekMoEConfig(experts=8, top_k=3, groups=4, top_groups=2, scaling_factor=2.5),
    DeepSeekMoEConfig(experts=6, top_k=2, groups=3, top_groups=1, normalize_top_k=False),
    DeepSeekMoEConfig(experts=8, top_k=3, scoring="softmax", score_bias=False, groups=2, top_groups=1,
                      group_score="max", normalize_top_k=False, scaling_factor=16.0),
    DeepSeekMoEConfig(experts=5, top_k=4, scoring="softmax", score_bias=False, group_score="max"),
], ids=["v3", "v3-unnormalised", "v2-grouped", "v2-greedy"])
def test_router_matches_the_routing_rule_token_by_token(cfg):
    torch.manual_seed(1)
    router = Router(12, cfg).double()
    router.weight.data.normal_()
    if cfg.score_bias:
        router.score_bias.data.normal_(std=0.3)
    x = torch.randn(20, 12, dtype=torch.float64)
    with torch.no_grad():
        weight, expert = router(x)
    for n in range(x.shape[0]):
        bias = router.score_bias.detach() if cfg.score_bias else None
        expected = _route_one(cfg, (x[n] @ router.weight.T).detach(), bias)
        got = {int(e): float(w) for e, w in zip(expert[n], weight[n])}
        assert got.keys() == expected.keys()
        assert all(math.isclose(got[e], expected[e], rel_tol=1e-12) for e in got)


def test_mtp_layers_are_parameters_the_forward_never_reads():
    block = native.BlockConfig(attention=MLAConfig(heads=2, kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2,
                                                   v_head_dim=2),
                               mlp=DeepSeekMoEConfig(experts=4, top_k=2, intermediate=4))
    cfg = native.ModelConfig(hidden_size=8, embeddings=native.EmbeddingConfig(vocab_size=20),
                             decoder=native.DecoderConfig(blocks=(block,), pattern=(0, 0)), metadata={MTP_KEY: 1})
    model = native.NativeModel(cfg)
    assert set(model.state_dict()) == set(native.state_shapes(cfg))
    assert any(n.startswith("mtp.0.layer.mlp.experts.") for n in model.state_dict())
    ids = torch.randint(0, 20, (1, 5))
    before = model(ids)
    with torch.no_grad():
        for p in model.mtp.parameters():
            p.add_(1.0)
    assert torch.equal(model(ids), before)


def test_sections_serialise_losslessly_and_plain_attention_still_reads():
    block = native.BlockConfig(attention=MLAConfig(q_lora_rank=8), mlp=DeepSeekMoEConfig(groups=2, top_groups=1))
    cfg = native.ModelConfig(decoder=native.DecoderConfig(blocks=(block, native.BlockConfig()), pattern=(0, 1)))
    assert native.ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "kind" not in cfg.to_dict()["decoder"]["blocks"][1]["attention"]


@pytest.mark.parametrize("make,fragment", [
    (lambda: DeepSeekMoEConfig(experts=6, groups=4), "groups=4 must divide"),
    (lambda: DeepSeekMoEConfig(experts=8, top_k=5, groups=4, top_groups=2), "top_k=5 exceeds"),
    (lambda: DeepSeekMoEConfig(experts=4, groups=4, top_groups=1, top_k=1), "top2_sum"),
    (lambda: MLAConfig(qk_rope_head_dim=3), "qk_rope_head_dim=3"),
    (lambda: MLAConfig(rotary=native.NoRotary()), "attention.rotary"),
    (lambda: MLAConfig(rotary=YarnRotary(mscale_all_dim=1.0)), "factor"),
])
def test_invalid_sections_are_refused_naming_the_field(make, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make()
