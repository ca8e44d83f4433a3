"""Native conventions the Gemma converters rely on: random norm multipliers stay where Gemma's stored
``multiplier - 1`` round-trips bit-exactly, and the embedding normaliser is transformers' float."""
from __future__ import annotations

import pytest
import torch

import native
from native.config import default_embedding_multiplier
from converters.weights import exact_offset_range


def _gemma_like(hidden: int = 12) -> native.ModelConfig:
    attention = native.AttentionConfig(heads=2, kv_heads=1, head_dim=4, qk_norm=native.RMSNormConfig(1e-6))
    block = native.BlockConfig(placement="sandwich", norm=native.RMSNormConfig(1e-6), attention=attention,
                               mlp=native.MLPConfig(intermediate=8, activation="gelu_tanh"))
    return native.ModelConfig(hidden_size=hidden, embeddings=native.EmbeddingConfig(
        vocab_size=23, multiplier=default_embedding_multiplier(hidden)),
        decoder=native.DecoderConfig(blocks=(block,), pattern=(0, 0)), head=native.HeadConfig(tied=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_random_norm_weights_survive_the_gemma_offset(dtype):
    state = native.random_state(_gemma_like(), seed=3, dtype=dtype)
    low, high = exact_offset_range(dtype)
    norms = {k: v for k, v in state.items() if "norm.weight" in k}
    assert len(norms) == 2 * 4 + 2 * 2 + 1  # sandwich norms, q/k norms, final norm
    for name, m in norms.items():
        assert bool(((m >= low) & (m <= high)).all()), name
        assert torch.equal((m - 1) + 1, m), name


def test_random_norm_noise_is_clipped():
    """Even a seed whose draws pass 4 sigma keeps multipliers in [0.6, 1.4] (never the identity)."""
    cfg = _gemma_like(hidden=48)
    for seed in range(20):
        for k, v in native.random_state(cfg, seed).items():
            if "norm.weight" in k:
                assert float(v.min()) >= 0.6 - 1e-6 and float(v.max()) <= 1.4 + 1e-6 and bool((v != 1).all())


@pytest.mark.parametrize("hidden", [1, 8, 48, 2304, 2921, 3541, 3072])
def test_embedding_multiplier_is_transformers_expression(hidden):
    assert default_embedding_multiplier(hidden) == hidden ** 0.5  # Gemma*Model: hidden_size**0.5
