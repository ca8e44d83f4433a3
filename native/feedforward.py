"""Feed-forward layers: the dense MLP and the routed mixture of experts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .feedforward_config import DeepSeekMoEConfig, FeedForwardConfig, MLPConfig, MoEConfig

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,  # exact (erf)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class MLP(nn.Module):
    """Gated: ``fc2(act(gate) * up)`` with ``fc1 = [gate; up]``; plain: ``fc2(act(fc1(x)))``."""

    def __init__(self, hidden: int, cfg: MLPConfig):
        super().__init__()
        self.gated = cfg.gated
        self.act = ACTIVATIONS[cfg.activation]
        self.fc1 = nn.Linear(hidden, 2 * cfg.intermediate if cfg.gated else cfg.intermediate, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.intermediate, hidden, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.fc1(x).chunk(2, dim=-1)
            return self.fc2(self.act(gate) * up)
        return self.fc2(self.act(self.fc1(x)))


class Experts(nn.Module):
    """``E`` gated MLPs stacked: ``fc1`` (E, 2I, H) = ``[gate; up]`` per expert, ``fc2`` (E, H, I)."""

    def __init__(self, hidden: int, cfg: MoEConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.activation]
        self.fc1 = nn.Parameter(torch.empty(cfg.experts, 2 * cfg.intermediate, hidden))
        self.fc2 = nn.Parameter(torch.empty(cfg.experts, hidden, cfg.intermediate))

    def forward(self, x: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x`` (N, H); ``expert``/``weight`` (N, k): token n adds ``weight * expert_e(x_n)``."""
        out = torch.zeros_like(x)
        for e in range(self.fc1.shape[0]):
            token, slot = torch.where(expert == e)
            if token.numel() == 0:
                continue
            gate, up = F.linear(x[token], self.fc1[e]).chunk(2, dim=-1)
            y = F.linear(self.act(gate) * up, self.fc2[e])
            out.index_add_(0, token, y * weight[token, slot, None])
        return out


class MoE(nn.Module):
    """Softmax router (in at least float32) → top-k experts, weights optionally renormalised to sum
    to 1; plus a shared expert, scaled by ``sigmoid(shared_gate(x))`` when gated (Qwen2-MoE)."""

    def __init__(self, hidden: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(hidden, cfg.experts, bias=False)
        self.experts = Experts(hidden, cfg)
        if cfg.shared_intermediate is not None:
            self.shared = MLP(hidden, MLPConfig(cfg.shared_intermediate, True, cfg.activation, False))
        if cfg.shared_gate:
            self.shared_gate = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits = self.router(flat)
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)
        weight, expert = probs.topk(self.cfg.top_k, dim=-1)
        if self.cfg.normalize_top_k:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        out = self.experts(flat, expert, weight.to(x.dtype))
        if self.cfg.shared_intermediate is not None:
            shared = self.shared(flat)
            if self.cfg.shared_gate:
                shared = torch.sigmoid(self.shared_gate(flat)) * shared
            out = out + shared
        return out.view_as(x)


def make_feedforward(hidden: int, cfg: FeedForwardConfig) -> nn.Module:
    if isinstance(cfg, MoEConfig):
        return MoE(hidden, cfg)
    if isinstance(cfg, MLPConfig):
        return MLP(hidden, cfg)
    if isinstance(cfg, DeepSeekMoEConfig):
        from .deepseek_moe import DeepSeekMoE  # (it builds on this module)

        return DeepSeekMoE(hidden, cfg)
    raise TypeError(f"unknown feed-forward config {type(cfg).__name__}")
