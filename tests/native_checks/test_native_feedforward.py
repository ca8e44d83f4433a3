"""Feed-forward layers, from the maths: gated/plain MLPs, activations, and the MoE against a dense
reference (one expert and top-1 is the MLP; all experts is the softmax-weighted sum)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from native import MLPConfig, MoEConfig
from native.feedforward import ACTIVATIONS, MLP, MoE

from native_cases import HIDDEN


def _randomized(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return module.double()


def _x(seed=1):
    return torch.randn(2, 7, HIDDEN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_activations():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS["silu"](x), x * torch.sigmoid(x))
    torch.testing.assert_close(ACTIVATIONS["gelu"](x), 0.5 * x * (1 + torch.erf(x / math.sqrt(2))))
    torch.testing.assert_close(ACTIVATIONS["gelu_tanh"](x), 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))))
    torch.testing.assert_close(ACTIVATIONS["relu"](x), x.clamp(min=0))


@pytest.mark.parametrize("bias", [False, True])
def test_gated_mlp_is_down_of_act_gate_times_up(bias):
    mlp = _randomized(MLP(HIDDEN, MLPConfig(24, gated=True, activation="silu", bias=bias)))
    x = _x()
    gate_w, up_w = mlp.fc1.weight.chunk(2)
    gate_b, up_b = mlp.fc1.bias.chunk(2) if bias else (None, None)
    expected = F.linear(F.silu(F.linear(x, gate_w, gate_b)) * F.linear(x, up_w, up_b), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(mlp(x), expected)


def test_plain_mlp():
    mlp = _randomized(MLP(HIDDEN, MLPConfig(24, gated=False, activation="relu", bias=True)))
    x = _x()
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.relu(mlp.fc1(x))))


@pytest.mark.parametrize("normalize", [False, True])
def test_single_expert_top1_is_the_dense_mlp(normalize):
    moe = _randomized(MoE(HIDDEN, MoEConfig(experts=1, top_k=1, intermediate=24, normalize_top_k=normalize)))
    mlp = MLP(HIDDEN, MLPConfig(24, gated=True)).double()
    with torch.no_grad():
        mlp.fc1.weight.copy_(moe.experts.fc1[0])
        mlp.fc2.weight.copy_(moe.experts.fc2[0])
    x = _x()
    torch.testing.assert_close(moe(x), mlp(x), rtol=1e-12, atol=1e-12)


def _dense_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Reference: every expert on every token, weighted by the (renormalised) top-k softmax."""
    probs = moe.router(x).softmax(-1)
    kept = torch.zeros_like(probs).scatter(-1, probs.topk(moe.cfg.top_k, -1).indices, 1.0) * probs
    if moe.cfg.normalize_top_k:
        kept = kept / kept.sum(-1, keepdim=True)
    gate, up = torch.einsum("bth,eih->btei", x, moe.experts.fc1).chunk(2, dim=-1)
    per_expert = torch.einsum("btei,ehi->bteh", F.silu(gate) * up, moe.experts.fc2)
    return (kept[..., None] * per_expert).sum(-2)


@pytest.mark.parametrize("experts,top_k,normalize", [(4, 4, True), (4, 4, False), (5, 2, True), (5, 2, False), (3, 1, False)])
def test_moe_matches_dense_reference(experts, top_k, normalize):
    moe = _randomized(MoE(HIDDEN, MoEConfig(experts=experts, top_k=top_k, intermediate=16, normalize_top_k=normalize)))
    x = _x()
    torch.testing.assert_close(moe(x), _dense_moe(moe, x), rtol=1e-10, atol=1e-12)


def test_all_experts_renormalised_is_the_full_softmax_mixture():
    a = _randomized(MoE(HIDDEN, MoEConfig(experts=4, top_k=4, intermediate=16, normalize_top_k=True)))
    b = MoE(HIDDEN, MoEConfig(experts=4, top_k=4, intermediate=16, normalize_top_k=False)).double()
    b.load_state_dict(a.state_dict())
    x = _x()
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gated", [False, True])
def test_shared_expert_is_added_and_sigmoid_gated(gated):
    cfg = MoEConfig(experts=3, top_k=2, intermediate=16, shared_intermediate=20, shared_gate=gated)
    moe = _randomized(MoE(HIDDEN, cfg))
    x = _x()
    shared = moe.shared(x)
    if gated:
        shared = torch.sigmoid(x @ moe.shared_gate.weight.T) * shared
    torch.testing.assert_close(moe(x), _dense_moe(moe, x) + shared, rtol=1e-10, atol=1e-12)


def test_moe_runs_in_bfloat16():
    moe = _randomized(MoE(HIDDEN, MoEConfig(experts=4, top_k=2, intermediate=16))).to(torch.bfloat16)
    out = moe(_x().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
