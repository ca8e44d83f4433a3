"""Random native state dicts for tests: every tensor random and away from its default, so a single
wrong, swapped or dropped tensor visibly changes the logits.

- norm gains ``1 + 0.1 N`` with ``N`` clipped to ``[-4, 4]`` (never exactly the identity, always in
  ``[0.6, 1.4]``); a zero-centred norm (Gemma) stores the offset, ``0.1 N`` clipped alike, so the
  model sees the same gains and the stored values are small, as real Gemma checkpoints have them
  (where ``1 + w`` in the weight's dtype would round); biases ``0.2 N`` (never zero);
- matrices ``N(0, 1/fan_in)`` so activations stay O(1) through depth and logits are O(1);
- the embedding ``N(0, 1)``, divided by the embedding multiplier when there is one (Gemma) and by
  ``sqrt(hidden)`` when tied, so both the residual stream and tied logits stay O(1).
"""
from __future__ import annotations

import math

import torch

from .config import ModelConfig
from .layout import norm_configs, state_shapes


def _std(cfg: ModelConfig, name: str, shape: tuple[int, ...], std: float | None) -> float:
    if name == "embedding.weight":
        if cfg.embeddings.multiplier is not None:
            return 1.0 / cfg.embeddings.multiplier
        return 1.0 / math.sqrt(cfg.hidden_size) if cfg.head.tied else 1.0
    return std if std is not None else 1.0 / math.sqrt(shape[-1])


def random_state(
    cfg: ModelConfig, seed: int, std: float | None = None, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A deterministic random state for ``cfg`` (names and shapes from ``state_shapes``). ``std``
    overrides the ``1/sqrt(fan_in)`` scale of the matrices. Values are drawn in float32, then cast."""
    generator = torch.Generator().manual_seed(seed)
    norms = norm_configs(cfg)
    state = {}
    for name, shape in state_shapes(cfg).items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if name in norms:
            offset = 0.1 * noise.clamp(-4.0, 4.0)
            value = offset if getattr(norms[name], "zero_centered", False) else 1.0 + offset
        elif name.endswith("bias"):
            value = 0.2 * noise
        else:
            value = _std(cfg, name, shape, std) * noise
        state[name] = value.to(dtype)
    return state
