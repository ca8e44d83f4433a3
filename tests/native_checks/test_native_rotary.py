"""Rotary embedding, from the maths: interleaved pairs rotate like complex numbers, position 0 is the
identity, scores depend on relative position only, and each kind's frequencies follow its formula."""
from __future__ import annotations

import math

import pytest
import torch

from native import DefaultRotary, DynamicRotary, LinearRotary, Llama3Rotary, NoRotary, YarnRotary
from native.rotary import apply_rotary, inv_freq, rotary_table

from native_cases import ROTARIES, longrope

HEAD_DIM = 8
MAX_POS = 64


def _table(rotary, seq_len, dtype=torch.float64):
    return rotary_table(rotary, HEAD_DIM, MAX_POS, seq_len, dtype)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_interleaved_pairs_rotate_as_complex_numbers():
    rotary = DefaultRotary(theta=100.0)
    table = _table(rotary, 12)
    x = _x(3, 12, HEAD_DIM)
    freqs, _ = inv_freq(rotary, HEAD_DIM, MAX_POS, 12)
    angles = torch.arange(12, dtype=torch.float64)[:, None] * freqs
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.polar(torch.ones_like(angles), angles))
    torch.testing.assert_close(apply_rotary(x, table), expected.flatten(-2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ROTARIES))
def test_position_zero_is_identity_up_to_attention_scaling(name):
    rotary = ROTARIES[name]
    table = _table(rotary, 5)
    _, scaling = inv_freq(rotary, HEAD_DIM, MAX_POS, 5)
    x = _x(2, 1, HEAD_DIM)
    rotary_dim = rotary.rotary_dim(HEAD_DIM)
    out = apply_rotary(x, table[:1])
    torch.testing.assert_close(out[..., :rotary_dim], scaling * x[..., :rotary_dim], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[..., rotary_dim:], x[..., rotary_dim:], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(ROTARIES))
def test_dims_beyond_rotary_dim_pass_through(name):
    rotary = ROTARIES[name]
    table = _table(rotary, 20)
    x = _x(20, HEAD_DIM)
    rotary_dim = rotary.rotary_dim(HEAD_DIM)
    assert torch.equal(apply_rotary(x, table)[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("name", sorted(ROTARIES))
def test_scores_depend_on_relative_position_only(name):
    rotary = ROTARIES[name]
    table = _table(rotary, 40)
    q, k = _x(HEAD_DIM, seed=1), _x(HEAD_DIM, seed=2)

    def score(m, n):
        return (apply_rotary(q, table[m]) @ apply_rotary(k, table[n])).item()

    for m, n, shift in [(3, 1, 10), (7, 7, 25), (12, 0, 27), (5, 2, 33)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-10, abs=1e-12)


def test_rotation_preserves_norm_without_attention_scaling():
    table = _table(DefaultRotary(), 30)
    x = _x(30, HEAD_DIM)
    torch.testing.assert_close(apply_rotary(x, table).norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)


def test_default_inv_freq_formula():
    freqs, scaling = inv_freq(DefaultRotary(theta=10000.0), 4, MAX_POS, 1)
    torch.testing.assert_close(freqs, torch.tensor([1.0, 0.01], dtype=torch.float64))
    assert scaling == 1.0
    partial, _ = inv_freq(DefaultRotary(theta=10000.0, fraction=0.5), 8, MAX_POS, 1)
    torch.testing.assert_close(partial, freqs)  # frequencies follow the rotary dim, not the head dim


def test_linear_divides_frequencies():
    base, _ = inv_freq(DefaultRotary(), HEAD_DIM, MAX_POS, 10)
    scaled, _ = inv_freq(LinearRotary(factor=4.0), HEAD_DIM, MAX_POS, 10)
    torch.testing.assert_close(scaled, base / 4.0)


def test_dynamic_is_default_within_max_positions_and_grows_theta_beyond():
    rotary = DynamicRotary(theta=10000.0, factor=2.0)
    base, _ = inv_freq(DefaultRotary(), HEAD_DIM, MAX_POS, MAX_POS)
    torch.testing.assert_close(inv_freq(rotary, HEAD_DIM, MAX_POS, MAX_POS)[0], base)
    seq = 3 * MAX_POS
    theta = 10000.0 * (2.0 * seq / MAX_POS - 1.0) ** (HEAD_DIM / (HEAD_DIM - 2))
    torch.testing.assert_close(inv_freq(rotary, HEAD_DIM, MAX_POS, seq)[0], inv_freq(DefaultRotary(theta=theta), HEAD_DIM, MAX_POS, seq)[0])


def test_dynamic_needs_more_than_two_rotary_dims_beyond_max_positions():
    with pytest.raises(ValueError, match="rotary dim"):
        inv_freq(DynamicRotary(factor=2.0), 2, MAX_POS, MAX_POS + 1)


def test_llama3_keeps_high_and_divides_low_frequencies():
    rotary = Llama3Rotary(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64, theta=10000.0)
    base, _ = inv_freq(DefaultRotary(theta=10000.0), 32, MAX_POS, 1)
    freqs, _ = inv_freq(rotary, 32, MAX_POS, 1)
    wavelen = 2 * math.pi / base
    high, low = wavelen < 64 / 4.0, wavelen > 64 / 1.0
    assert high.any() and low.any() and (~high & ~low).any()
    torch.testing.assert_close(freqs[high], base[high])
    torch.testing.assert_close(freqs[low], base[low] / 8.0)
    middle = ~high & ~low
    assert ((freqs[middle] < base[middle]) & (freqs[middle] > base[middle] / 8.0)).all()


def test_yarn_attention_factor_and_identity_at_factor_one():
    base, _ = inv_freq(DefaultRotary(), HEAD_DIM, MAX_POS, 1)
    freqs, scaling = inv_freq(YarnRotary(factor=1.0, original_max_position_embeddings=MAX_POS), HEAD_DIM, MAX_POS, 1)
    torch.testing.assert_close(freqs, base)
    assert scaling == 1.0
    _, scaling = inv_freq(YarnRotary(factor=4.0, original_max_position_embeddings=16), HEAD_DIM, MAX_POS, 1)
    assert scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
    _, implied = inv_freq(YarnRotary(original_max_position_embeddings=16), HEAD_DIM, MAX_POS, 1)
    assert implied == pytest.approx(scaling)  # factor None means max_positions / original = 4
    _, ratio = inv_freq(YarnRotary(factor=4.0, original_max_position_embeddings=16, mscale=2.0, mscale_all_dim=1.0), HEAD_DIM, MAX_POS, 1)
    assert ratio == pytest.approx((0.2 * math.log(4.0) + 1.0) / (0.1 * math.log(4.0) + 1.0))
    _, explicit = inv_freq(YarnRotary(factor=4.0, original_max_position_embeddings=16, attention_factor=0.7), HEAD_DIM, MAX_POS, 1)
    assert explicit == 0.7


def test_yarn_extrapolates_high_and_interpolates_low_frequencies():
    base, _ = inv_freq(DefaultRotary(), 64, MAX_POS, 1)
    freqs, _ = inv_freq(YarnRotary(factor=4.0, original_max_position_embeddings=16), 64, MAX_POS, 1)
    assert freqs[0] == base[0]
    assert freqs[-1] == pytest.approx(base[-1] / 4.0)


def test_longrope_switches_factors_past_original_context():
    rotary = longrope(original_max_position_embeddings=16)
    base, _ = inv_freq(DefaultRotary(), HEAD_DIM, MAX_POS, 1)
    short, scaling = inv_freq(rotary, HEAD_DIM, MAX_POS, 16)
    long, _ = inv_freq(rotary, HEAD_DIM, MAX_POS, 17)
    torch.testing.assert_close(short, base / torch.tensor(rotary.short_factor, dtype=torch.float64))
    torch.testing.assert_close(long, base / torch.tensor(rotary.long_factor, dtype=torch.float64))
    assert scaling == pytest.approx(math.sqrt(1 + math.log(MAX_POS / 16) / math.log(16)))
    _, unscaled = inv_freq(longrope(original_max_position_embeddings=MAX_POS), HEAD_DIM, MAX_POS, 1)
    assert unscaled == 1.0


def test_table_follows_dtype_promoted_to_float32():
    for dtype, expected in [(torch.float64, torch.complex128), (torch.float32, torch.complex64), (torch.bfloat16, torch.complex64)]:
        assert _table(DefaultRotary(), 4, dtype).dtype == expected
    x = _x(4, HEAD_DIM).to(torch.bfloat16)
    assert apply_rotary(x, _table(DefaultRotary(), 4, torch.bfloat16)).dtype == torch.bfloat16
    assert _table(NoRotary(), 4).shape == (4, 0)
