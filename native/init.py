"""Random native state dicts for tests: every tensor random and away from its default, so a single
wrong, swapped or dropped tensor visibly changes the logits.

- norm weights ``1 + 0.1 N`` with ``N`` clipped to ``[-4, 4]`` (never exactly the identity, always in
  ``[0.6, 1.4]``: inside every dtype's exact range for Gemma's stored ``multiplier - 1``, so that
  offset round-trips bit-exactly, see ``converters.weights.exact_offset_range``), biases ``0.2 N``
  (never zero);
- matrices ``N(0, 1/fan_in)`` so activations stay O(1) through depth and logits are O(1);
- the embedding ``N(0, 1)``, divided by the embedding multiplier when there is one (Gemma) and by
  ``sqrt(hidden)`` when tied, so both the residual stream and tied logits stay O(1).
"""
from __future__ import annotations

import math

import torch

from .config import ModelConfig
from .layout import state_shapes


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
    state = {}
    for name, shape in state_shapes(cfg).items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if "norm." in name and name.endswith("weight"):
            value = 1.0 + 0.1 * noise.clamp(-4.0, 4.0)
        elif name.endswith("bias"):
            value = 0.2 * noise
        else:
            value = _std(cfg, name, shape, std) * noise
        state[name] = value.to(dtype)
    return state
