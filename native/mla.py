"""Multi-head latent attention (DeepSeek-V2/V3), written from the maths (see ``MLAConfig``).

Queries go through an optional low-rank bottleneck; keys and values through a shared latent of
rank ``kv_lora_rank`` (RMS-normalised, then expanded per head) plus one decoupled rotary key that
every head shares. Only the rope part of each query and that shared key rotate; the rope rows keep
the native interleaved pair order, as in ``native.rotary``.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import MLAConfig
from .norms import RMSNorm
from .rotary import apply_rotary


class MLA(nn.Module):
    def __init__(self, hidden: int, cfg: MLAConfig):
        super().__init__()
        self.cfg = cfg
        q_size = cfg.heads * cfg.qk_head_dim
        if cfg.q_lora_rank is None:
            self.q = nn.Linear(hidden, q_size, bias=False)
        else:
            self.q_down = nn.Linear(hidden, cfg.q_lora_rank, bias=cfg.bias)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.lora_norm_eps)
            self.q_up = nn.Linear(cfg.q_lora_rank, q_size, bias=False)
        self.kv_down = nn.Linear(hidden, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=cfg.bias)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, cfg.lora_norm_eps)
        self.kv_up = nn.Linear(cfg.kv_lora_rank, cfg.heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o = nn.Linear(cfg.heads * cfg.v_head_dim, hidden, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        a = self.cfg
        B, T, _ = x.shape
        q = self.q(x) if a.q_lora_rank is None else self.q_up(self.q_norm(self.q_down(x)))
        q = q.view(B, T, a.heads, a.qk_head_dim).transpose(1, 2)  # (B, heads, T, nope + rope)
        q_nope, q_rope = q.split((a.qk_nope_head_dim, a.qk_rope_head_dim), dim=-1)

        latent, k_rope = self.kv_down(x).split((a.kv_lora_rank, a.qk_rope_head_dim), dim=-1)
        kv = self.kv_up(self.kv_norm(latent)).view(B, T, a.heads, a.qk_nope_head_dim + a.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split((a.qk_nope_head_dim, a.v_head_dim), dim=-1)

        q_rope = apply_rotary(q_rope, rotations)
        k_rope = apply_rotary(k_rope[:, None], rotations)  # one key for all heads: (B, 1, T, rope)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(B, a.heads, T, a.qk_rope_head_dim)), dim=-1)

        scores = (q @ k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32)) * a.softmax_scale
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(B, T, a.heads * a.v_head_dim)
        return self.o(out)
