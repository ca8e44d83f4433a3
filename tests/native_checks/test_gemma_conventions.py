"""Native conventions the Gemma converters rely on: zero-centred norms (stored ``w``, applied as
``1 + w`` in the compute dtype), random offsets that are small as in real Gemma checkpoints, and the
embedding normaliser is transformers' float."""
from __future__ import annotations

import pytest
import torch

import native
from native.config import default_embedding_multiplier
from native.norms import RMSNorm


def _gemma_like(hidden: int = 12) -> native.ModelConfig:
    norm = native.RMSNormConfig(1e-6, zero_centered=True)
    attention = native.AttentionConfig(heads=2, kv_heads=1, head_dim=4, qk_norm=norm)
    block = native.BlockConfig(placement="sandwich", norm=norm, attention=attention,
                               mlp=native.MLPConfig(intermediate=8, activation="gelu_tanh"))
    return native.ModelConfig(hidden_size=hidden, embeddings=native.EmbeddingConfig(
        vocab_size=23, multiplier=default_embedding_multiplier(hidden)),
        decoder=native.DecoderConfig(blocks=(block,), pattern=(0, 0)), final_norm=norm,
        head=native.HeadConfig(tied=True))


def test_zero_centred_random_norms_are_small_offsets():
    """Offsets ``0.1 N`` clipped to [-0.4, 0.4], never 0: the gain ``1 + w`` is never the identity."""
    cfg = _gemma_like(hidden=48)
    for seed in range(20):
        norms = {k: v for k, v in native.random_state(cfg, seed).items() if "norm.weight" in k}
        assert len(norms) == 2 * 4 + 2 * 2 + 1  # sandwich norms, q/k norms, final norm
        for name, w in norms.items():
            assert float(w.abs().max()) <= 0.4 + 1e-6 and bool((w != 0).all()), name


def test_gain_norms_stay_around_one():
    cfg = native.ModelConfig(hidden_size=48, embeddings=native.EmbeddingConfig(vocab_size=23),
                             decoder=native.DecoderConfig.from_layers([native.BlockConfig()]))
    for seed in range(20):
        for k, v in native.random_state(cfg, seed).items():
            if "norm.weight" in k:
                assert float(v.min()) >= 0.6 - 1e-6 and float(v.max()) <= 1.4 + 1e-6 and bool((v != 1).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zero_centred_gain_is_applied_in_float32_never_rounded_to_the_weight_dtype(dtype):
    """``1 + w`` formed in the compute precision, as transformers' Gemma RMSNorm does
    (``x̂ * (1.0 + w.float())``): a small ``w`` in bf16 keeps its bits in the gain."""
    torch.manual_seed(0)
    x = torch.randn(3, 16, dtype=dtype)
    w = (0.05 * torch.randn(16)).to(dtype)
    norm = RMSNorm(16, 1e-6, zero_centered=True)
    norm.weight.data = w
    h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(norm(x), (h * (1.0 + w.float())).to(dtype))
    assert torch.equal(RMSNorm(16, 1e-6, zero_centered=True)(x), RMSNorm(16, 1e-6)(x))  # identity at init


@pytest.mark.parametrize("hidden", [1, 8, 48, 2304, 2921, 3541, 3072])
def test_embedding_multiplier_is_transformers_expression(hidden):
    assert default_embedding_multiplier(hidden) == hidden ** 0.5  # Gemma*Model: hidden_size**0.5
