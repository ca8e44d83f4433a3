"""Small native configs in Gemma's conventions (zero-centred RMSNorms, the ``sqrt(hidden)``
embedding multiplier), shared by the Gemma, Gemma2 and Gemma3 test files."""
from __future__ import annotations

import native

RMS = native.RMSNormConfig(eps=1e-6, zero_centered=True)


def block(*, placement: str = "pre", heads: int = 4, kv_heads: int = 2, head_dim: int = 8, bias: bool = False,
          window: int | None = None, rotary=native.DefaultRotary(theta=10000.0), softcap: float | None = None,
          scale: float | None = None, qk_norm: bool = False, activation: str = "gelu_tanh",
          intermediate: int = 40) -> native.BlockConfig:
    attention = native.AttentionConfig(
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, q_bias=bias, k_bias=bias, v_bias=bias, o_bias=bias,
        qk_norm=RMS if qk_norm else None, softmax_scale=scale, logit_softcap=softcap, window=window, rotary=rotary)
    return native.BlockConfig(placement=placement, norm=RMS, attention=attention,
                              mlp=native.MLPConfig(intermediate=intermediate, activation=activation))


def model(layers: list[native.BlockConfig], *, hidden: int = 32, vocab: int = 61, tied: bool = True,
          final_softcap: float | None = None, max_position: int = 64) -> native.ModelConfig:
    return native.ModelConfig(
        hidden_size=hidden, max_position_embeddings=max_position,
        embeddings=native.EmbeddingConfig(vocab_size=vocab, multiplier=hidden ** 0.5),
        decoder=native.DecoderConfig.from_layers(layers), final_norm=RMS,
        head=native.HeadConfig(tied=tied, final_softcap=final_softcap))
