"""The rotary sections of the native config: one frozen dataclass per rope kind (default, linear,
dynamic NTK, Llama 3, YaRN, LongRoPE), as transformers' ``rope_type`` names them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .schema import Section, architecture
from .schema import check as _check, positive as _positive, positive_int as _positive_int


# --------------------------------------------------------------------------------------- rotary
@dataclass(frozen=True)
class NoRotary(Section):
    """No positional rotation at all."""

    kind = "none"

    def rotary_dim(self, head_dim: int) -> int:
        return 0


@dataclass(frozen=True)
class DefaultRotary(Section):
    """Plain RoPE. ``fraction`` < 1 rotates only the first ``int(head_dim * fraction)`` dims."""

    kind = "default"
    theta: float = architecture(10000.0)
    fraction: float = architecture(1.0)

    def __post_init__(self):
        _positive("rotary", "theta", self.theta)
        _check(isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1,
               f"rotary.fraction={self.fraction!r} must be in (0, 1]")

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.fraction)


@dataclass(frozen=True)
class LinearRotary(DefaultRotary):
    """Position interpolation: positions divided by ``factor``."""

    kind = "linear"
    factor: float = architecture(1.0)

    def __post_init__(self):
        super().__post_init__()
        _positive("rotary", "factor", self.factor)


@dataclass(frozen=True)
class DynamicRotary(LinearRotary):
    """Dynamic NTK: theta grows once the sequence passes the model's ``max_position_embeddings``."""

    kind = "dynamic"


@dataclass(frozen=True)
class Llama3Rotary(LinearRotary):
    """Llama 3.1 wavelength-banded frequency scaling."""

    kind = "llama3"
    low_freq_factor: float = architecture(1.0)
    high_freq_factor: float = architecture(4.0)
    original_max_position_embeddings: int = architecture(8192)

    def __post_init__(self):
        super().__post_init__()
        _positive("rotary", "low_freq_factor", self.low_freq_factor)
        _positive("rotary", "high_freq_factor", self.high_freq_factor)
        _check(self.high_freq_factor > self.low_freq_factor,
               f"rotary.high_freq_factor={self.high_freq_factor} must exceed low_freq_factor={self.low_freq_factor}")
        _positive_int("rotary", "original_max_position_embeddings", self.original_max_position_embeddings)


@dataclass(frozen=True)
class YarnRotary(DefaultRotary):
    """YaRN. ``factor=None`` means ``max_position_embeddings / original_max_position_embeddings``;
    ``attention_factor=None`` means the paper's mscale formula."""

    kind = "yarn"
    factor: float | None = architecture(None)
    original_max_position_embeddings: int = architecture(4096)
    beta_fast: float = architecture(32.0)
    beta_slow: float = architecture(1.0)
    mscale: float | None = architecture(None)
    mscale_all_dim: float | None = architecture(None)
    attention_factor: float | None = architecture(None)
    truncate: bool = architecture(True)

    def __post_init__(self):
        super().__post_init__()
        _positive("rotary", "factor", self.factor, allow_none=True)
        _positive_int("rotary", "original_max_position_embeddings", self.original_max_position_embeddings)
        _positive("rotary", "beta_fast", self.beta_fast)
        _positive("rotary", "beta_slow", self.beta_slow)
        _check(self.beta_fast > self.beta_slow,
               f"rotary.beta_fast={self.beta_fast} must exceed beta_slow={self.beta_slow}")
        _positive("rotary", "mscale", self.mscale, allow_none=True)
        _positive("rotary", "mscale_all_dim", self.mscale_all_dim, allow_none=True)
        _positive("rotary", "attention_factor", self.attention_factor, allow_none=True)


@dataclass(frozen=True)
class LongRopeRotary(DefaultRotary):
    """Phi-3 LongRoPE: per-frequency ``short_factor`` up to ``original_max_position_embeddings``
    tokens, ``long_factor`` beyond. ``factor``/``attention_factor`` as for YaRN."""

    kind = "longrope"
    short_factor: tuple[float, ...] = architecture(())
    long_factor: tuple[float, ...] = architecture(())
    original_max_position_embeddings: int = architecture(4096)
    factor: float | None = architecture(None)
    attention_factor: float | None = architecture(None)

    def __post_init__(self):
        super().__post_init__()
        self._tuple("short_factor", float)
        self._tuple("long_factor", float)
        _check(len(self.short_factor) == len(self.long_factor),
               f"rotary.short_factor has {len(self.short_factor)} entries but long_factor has {len(self.long_factor)}")
        _check(all(v > 0 for v in self.short_factor + self.long_factor), "rotary.short_factor/long_factor must be positive")
        _positive_int("rotary", "original_max_position_embeddings", self.original_max_position_embeddings)
        _positive("rotary", "factor", self.factor, allow_none=True)
        _positive("rotary", "attention_factor", self.attention_factor, allow_none=True)


RotaryConfig = Union[NoRotary, DefaultRotary, LinearRotary, DynamicRotary, Llama3Rotary, YarnRotary, LongRopeRotary]
ROTARY_KINDS = {cls.kind: cls for cls in (NoRotary, DefaultRotary, LinearRotary, DynamicRotary, Llama3Rotary, YarnRotary, LongRopeRotary)}
