"""Normalisation layers. The weight is stored as the checkpoint has it: the gain itself, or for a
zero-centred RMSNorm (Gemma) its offset ``w``, applied as ``1 + w`` in the compute dtype, never
rounded back to the weight's dtype. Statistics are computed in at least float32 so half-precision
models normalise accurately."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LayerNormConfig, NormConfig, RMSNormConfig


def _upcast(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * gain``, where ``gain`` is ``weight``, or ``1 + weight`` when
    ``zero_centered`` (then the identity is ``weight = 0``)."""

    def __init__(self, size: int, eps: float, zero_centered: bool = False):
        super().__init__()
        self.eps = eps
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.zeros(size) if zero_centered else torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(_upcast(x))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        gain = self.weight.to(h.dtype)
        return (h * (1.0 + gain if self.zero_centered else gain)).to(x.dtype)


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * weight (+ bias)``."""

    def __init__(self, size: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _upcast(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.layer_norm(x.to(dtype), self.weight.shape, self.weight.to(dtype), bias, self.eps).to(x.dtype)


def make_norm(cfg: NormConfig, size: int) -> nn.Module:
    if isinstance(cfg, RMSNormConfig):
        return RMSNorm(size, cfg.eps, cfg.zero_centered)
    if isinstance(cfg, LayerNormConfig):
        return LayerNorm(size, cfg.eps, cfg.bias)
    raise TypeError(f"unknown norm config {type(cfg).__name__}")
