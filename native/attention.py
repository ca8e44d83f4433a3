"""Causal self-attention over the fused, KV-grouped ``qkv`` projection (see native/layout.py).

``qkv`` rows are, for each kv head ``g``: the ``group`` q heads that share it, then ``k_g``, then
``v_g``; query head ``h`` therefore reads kv head ``h // group``. q/k norms act before rotary, and
the rotary pairs of q and k are interleaved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AttentionConfig
from .norms import make_norm
from .rotary import apply_rotary


def visibility_mask(seq_len: int, window: int | None, key_padding: torch.Tensor | None, device=None) -> torch.Tensor:
    """Boolean ``(B or 1, 1, T, T)``: query ``i`` sees key ``j`` iff ``j <= i``, ``i - window < j``
    when windowed, and key ``j`` is not padding (``key_padding[b, j] == 1``)."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)
    allowed = allowed[None, None]
    if key_padding is not None:
        allowed = allowed & key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]
    return allowed


class Attention(nn.Module):
    def __init__(self, hidden: int, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        q_size, kv_size = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.qkv = nn.Linear(hidden, q_size + 2 * kv_size, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(q_size)) if cfg.q_bias else None
        self.k_bias = nn.Parameter(torch.zeros(kv_size)) if cfg.k_bias else None
        self.v_bias = nn.Parameter(torch.zeros(kv_size)) if cfg.v_bias else None
        self.o = nn.Linear(q_size, hidden, bias=cfg.o_bias)
        if cfg.qk_norm is not None:
            per_head = cfg.qk_norm_scope == "head"
            self.q_norm = make_norm(cfg.qk_norm, cfg.head_dim if per_head else q_size)
            self.k_norm = make_norm(cfg.qk_norm, cfg.head_dim if per_head else kv_size)
        self.scale = cfg.softmax_scale if cfg.softmax_scale is not None else cfg.head_dim ** -0.5

    def _qk_norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per head, or (``full`` scope, OLMo2) over the whole projection of all heads."""
        if self.cfg.qk_norm_scope == "full":
            return norm(x.flatten(-2)).view_as(x)
        return norm(x)

    def _qkv_bias(self, x: torch.Tensor) -> torch.Tensor | None:
        """The q/k/v biases laid out like the fused ``qkv`` rows (zeros where a projection has none),
        so the bias is added inside the matmul and rounds once, as ``nn.Linear`` does: adding it
        afterwards rounds the product to the dtype first, a second rounding that doubles the
        bfloat16 error of biased models (Qwen2) against the HF reference."""
        a = self.cfg
        if self.q_bias is None and self.k_bias is None and self.v_bias is None:
            return None

        def heads(bias: torch.Tensor | None, n: int) -> torch.Tensor:
            return x.new_zeros(n, a.head_dim) if bias is None else bias.to(x.dtype).view(n, a.head_dim)

        q = heads(self.q_bias, a.heads).view(a.kv_heads, a.group, a.head_dim)
        k = heads(self.k_bias, a.kv_heads).view(a.kv_heads, 1, a.head_dim)
        v = heads(self.v_bias, a.kv_heads).view(a.kv_heads, 1, a.head_dim)
        return torch.cat((q, k, v), dim=1).reshape(-1)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        a = self.cfg
        B, T, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, self._qkv_bias(x)).view(B, T, a.kv_heads, a.group + 2, a.head_dim)
        q = qkv[..., : a.group, :].reshape(B, T, a.heads, a.head_dim)
        k, v = qkv[..., a.group, :], qkv[..., a.group + 1, :]
        if a.qk_norm is not None:
            q, k = self._qk_norm(self.q_norm, q), self._qk_norm(self.k_norm, k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_dim)
        q, k = apply_rotary(q, rotations), apply_rotary(k, rotations)
        k, v = k.repeat_interleave(a.group, dim=1), v.repeat_interleave(a.group, dim=1)

        scores = (q @ k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32)) * self.scale
        if a.logit_softcap is not None:
            scores = torch.tanh(scores / a.logit_softcap) * a.logit_softcap
        # A finite fill keeps fully masked rows (padding queries) finite: they average all keys.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(B, T, a.heads * a.head_dim)
        return self.o(out)
