"""Rotary position embedding: inverse frequencies for every rotary kind, and the rotation itself.

Two pure functions do the work, as in gpt-fast: :func:`rotary_table` turns a rotary config and the
sequence length into a table of unit complex numbers, :func:`apply_rotary` rotates q or k with it.

Native q/k keep rotary pairs **interleaved**: dims ``2j, 2j+1`` of a head are the real and imaginary
parts of pair ``j`` (Meta/complex layout), rotated by angle ``position * inv_freq[j]``. Only the
first ``rotary_dim`` dims of each head rotate; the rest pass through.

Frequencies are computed in float64 from the formulas; the table is built in the model's dtype
promoted to at least float32, so a float64 model is exact and lower precisions round only once.
The attention scaling of YaRN/LongRoPE multiplies the table, hence both q and k (as HF does).
"""
from __future__ import annotations

import math

import torch

from .rotary_config import (
    DynamicRotary,
    Llama3Rotary,
    LinearRotary,
    LongRopeRotary,
    NoRotary,
    RotaryConfig,
    YarnRotary,
)


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    """``inv_freq[j] = theta ** (-2j / dim)``, the frequency of pair ``j``."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def _dynamic_theta(rotary: DynamicRotary, dim: int, max_positions: int, seq_len: int) -> float:
    """Dynamic NTK: past ``max_positions`` tokens, theta grows so the longest wavelength covers the
    sequence. Within ``max_positions`` it is plain RoPE."""
    if seq_len <= max_positions:
        return rotary.theta
    if dim <= 2:
        raise ValueError(f"dynamic rotary needs a rotary dim above 2 to rescale theta, got {dim}")
    factor = rotary.factor
    return rotary.theta * ((factor * seq_len / max_positions) - (factor - 1)) ** (dim / (dim - 2))


def _llama3_inv_freq(rotary: Llama3Rotary, dim: int) -> torch.Tensor:
    """Llama 3.1: wavelengths beyond ``orig / low_freq_factor`` are divided by ``factor``, those
    below ``orig / high_freq_factor`` kept, and the band between interpolated smoothly."""
    inv_freq = _default_inv_freq(rotary.theta, dim)
    orig = rotary.original_max_position_embeddings
    low_wavelen = orig / rotary.low_freq_factor
    high_wavelen = orig / rotary.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (orig / wavelen - rotary.low_freq_factor) / (rotary.high_freq_factor - rotary.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / rotary.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rotary.factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn_factor(factor: float | None, orig: int, max_positions: int) -> float:
    """YaRN and LongRoPE default their factor to the context extension ratio."""
    return max_positions / orig if factor is None else factor


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rotary: YarnRotary, dim: int, max_positions: int) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071): high frequencies extrapolate, low frequencies interpolate by
    ``factor``, with a linear ramp between the dims completing ``beta_fast`` and ``beta_slow`` turns
    over the original context; the rotation table is scaled by the attention factor."""
    orig = rotary.original_max_position_embeddings
    factor = _yarn_factor(rotary.factor, orig, max_positions)
    attention_factor = rotary.attention_factor
    if attention_factor is None:
        if rotary.mscale and rotary.mscale_all_dim:
            attention_factor = _yarn_mscale(factor, rotary.mscale) / _yarn_mscale(factor, rotary.mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)

    def correction_dim(turns: float) -> float:
        return dim * math.log(orig / (turns * 2 * math.pi)) / (2 * math.log(rotary.theta))

    low, high = correction_dim(rotary.beta_fast), correction_dim(rotary.beta_slow)
    if rotary.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = _default_inv_freq(rotary.theta, dim)
    interpolation = extrapolation / factor
    inv_freq = interpolation * ramp + extrapolation * (1 - ramp)
    return inv_freq, float(attention_factor)


def _longrope(rotary: LongRopeRotary, dim: int, max_positions: int, seq_len: int) -> tuple[torch.Tensor, float]:
    """LongRoPE (Phi-3): per-frequency rescaling, ``long_factor`` once the sequence exceeds the
    original context, ``short_factor`` otherwise."""
    orig = rotary.original_max_position_embeddings
    factor = _yarn_factor(rotary.factor, orig, max_positions)
    attention_factor = rotary.attention_factor
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    ext = rotary.long_factor if seq_len > orig else rotary.short_factor
    inv_freq = _default_inv_freq(rotary.theta, dim) / torch.tensor(ext, dtype=torch.float64)
    return inv_freq, float(attention_factor)


def inv_freq(rotary: RotaryConfig, head_dim: int, max_positions: int, seq_len: int) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_scaling)`` for a sequence of ``seq_len`` tokens (positions
    ``0..seq_len-1``). ``inv_freq`` is float64 with ``rotary_dim // 2`` entries."""
    dim = rotary.rotary_dim(head_dim)
    if isinstance(rotary, NoRotary):
        return torch.zeros(0, dtype=torch.float64), 1.0
    if isinstance(rotary, YarnRotary):
        return _yarn(rotary, dim, max_positions)
    if isinstance(rotary, LongRopeRotary):
        return _longrope(rotary, dim, max_positions, seq_len)
    if isinstance(rotary, Llama3Rotary):
        return _llama3_inv_freq(rotary, dim), 1.0
    if isinstance(rotary, DynamicRotary):  # before LinearRotary: Dynamic subclasses it
        return _default_inv_freq(_dynamic_theta(rotary, dim, max_positions, seq_len), dim), 1.0
    if isinstance(rotary, LinearRotary):
        return _default_inv_freq(rotary.theta, dim) / rotary.factor, 1.0
    return _default_inv_freq(rotary.theta, dim), 1.0


def rotary_table(
    rotary: RotaryConfig, head_dim: int, max_positions: int, seq_len: int, dtype: torch.dtype, device=None
) -> torch.Tensor:
    """Complex ``(seq_len, rotary_dim // 2)`` table ``scaling * exp(i * position * inv_freq)``, in
    ``dtype`` promoted to at least float32 (complex64 or complex128)."""
    freqs, scaling = inv_freq(rotary, head_dim, max_positions, seq_len)
    real_dtype = torch.promote_types(dtype, torch.float32)
    positions = torch.arange(seq_len, device=device, dtype=real_dtype)
    angles = torch.outer(positions, freqs.to(device=device, dtype=real_dtype))
    return torch.polar(torch.full_like(angles, scaling), angles)


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of the first ``2 * table.shape[-1]`` dims of ``x`` (..., T, head_dim)
    as complex numbers; the rest of each head passes through. Computed in the table's precision,
    returned in x's dtype."""
    rotary_dim = 2 * table.shape[-1]
    if rotary_dim == 0:
        return x
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    pairs = torch.view_as_complex(rot.to(table.real.dtype).unflatten(-1, (-1, 2)).contiguous())
    rotated = torch.view_as_real(pairs * table).flatten(-2)
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)
