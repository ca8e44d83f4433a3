"""Where a model's behaviour changes with the sequence length: a forward comparison must run past
every such length, or a converter bug in a window or a rescaled rotary goes unseen."""
from __future__ import annotations

from .config import ModelConfig


def length_thresholds(cfg: ModelConfig, context_rotaries: tuple[type, ...] = ()) -> list[int]:
    """The sequence lengths past which ``cfg`` behaves differently: every sliding window, every
    rotary ``original_max_position_embeddings`` and, for a rotary of ``context_rotaries`` (those
    rescaling past the context), ``max_position_embeddings``."""
    out = []
    for block in cfg.decoder.blocks:
        attention = block.attention
        if attention.window is not None:
            out.append(attention.window)
        rotary = attention.rotary
        original = getattr(rotary, "original_max_position_embeddings", None)
        if original is not None:
            out.append(original)
        if isinstance(rotary, context_rotaries):
            out.append(cfg.max_position_embeddings)
    return out
