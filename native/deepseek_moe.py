"""DeepSeekMoE: group-limited routing with softmax or sigmoid scores, a score bias that shifts only
the choice, a routed scaling factor, and always-on shared experts (see ``DeepSeekMoEConfig``)."""
from __future__ import annotations

import torch
from torch import nn

from .feedforward_config import DeepSeekMoEConfig, MLPConfig
from .feedforward import MLP, Experts


class DeepSeekMoE(nn.Module):
    def __init__(self, hidden: int, cfg: DeepSeekMoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = Router(hidden, cfg)
        self.experts = Experts(hidden, cfg)
        if cfg.shared_experts:
            self.shared = MLP(hidden, MLPConfig(cfg.shared_intermediate, True, cfg.activation, False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weight, expert = self.router(flat)
        out = self.experts(flat, expert, weight.to(x.dtype))
        if self.cfg.shared_experts:
            out = out + self.shared(flat)
        return out.view_as(x)


class Router(nn.Module):
    """``(weights, experts)`` of shape (N, top_k) per token, computed in at least float32."""

    def __init__(self, hidden: int, cfg: DeepSeekMoEConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.experts, hidden))
        if cfg.score_bias:
            self.score_bias = nn.Parameter(torch.zeros(cfg.experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        dtype = torch.promote_types(x.dtype, torch.float32)
        logits = x.to(dtype) @ self.weight.to(dtype).T
        scores = logits.softmax(dim=-1) if c.scoring == "softmax" else logits.sigmoid()
        choice = scores + self.score_bias.to(dtype) if c.score_bias else scores
        if c.groups > 1:
            grouped = choice.view(-1, c.groups, c.experts // c.groups)
            group_scores = grouped.amax(-1) if c.group_score == "max" else grouped.topk(2, dim=-1).values.sum(-1)
            kept = torch.zeros_like(group_scores, dtype=torch.bool)
            kept.scatter_(1, group_scores.topk(c.top_groups, dim=-1).indices, True)
            choice = choice.masked_fill(~kept.repeat_interleave(c.experts // c.groups, dim=1), float("-inf"))
        expert = choice.topk(c.top_k, dim=-1).indices
        weight = scores.gather(1, expert)
        if c.normalize_top_k:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        return weight * c.scaling_factor, expert
