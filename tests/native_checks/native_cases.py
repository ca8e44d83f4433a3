"""Tiny native configs for the model's unit tests: one builder with keyword overrides, and a
catalogue covering every placement, norm, rotary kind and feed-forward variant."""
from __future__ import annotations

import torch

from native import (
    AttentionConfig, BlockConfig, DecoderConfig, DefaultRotary, DynamicRotary, EmbeddingConfig, HeadConfig,
    LayerNormConfig, LinearRotary, Llama3Rotary, LongRopeRotary, MLPConfig, ModelConfig, MoEConfig, NativeModel,
    NoRotary, RMSNormConfig, YarnRotary, random_state,
)

HIDDEN = 32
VOCAB = 61


def attention(**overrides) -> AttentionConfig:
    return AttentionConfig(**{"heads": 4, "kv_heads": 2, "head_dim": 8, **overrides})


def block(placement="pre", norm=None, mlp=None, **attn) -> BlockConfig:
    return BlockConfig(placement=placement, norm=norm or RMSNormConfig(1e-6), attention=attention(**attn),
                       mlp=mlp or MLPConfig(intermediate=48))


def model(*blocks: BlockConfig, layers: int = 2, tied=False, multiplier=None, final_softcap=None,
          final_norm=None, max_positions=64) -> ModelConfig:
    """``blocks`` cycle over ``layers`` layers (default: one Llama-like pre-norm block)."""
    blocks = blocks or (block(),)
    return ModelConfig(
        hidden_size=HIDDEN,
        max_position_embeddings=max_positions,
        embeddings=EmbeddingConfig(vocab_size=VOCAB, multiplier=multiplier),
        decoder=DecoderConfig(blocks=tuple(blocks), pattern=tuple(i % len(blocks) for i in range(layers))),
        final_norm=final_norm or blocks[0].norm,
        head=HeadConfig(tied=tied, final_softcap=final_softcap),
    )


def built(cfg: ModelConfig, seed: int = 0, dtype=torch.float64) -> NativeModel:
    m = NativeModel(cfg).to(dtype).eval()
    m.load_state_dict(random_state(cfg, seed, dtype=dtype))
    return m


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def longrope(**overrides) -> LongRopeRotary:
    return LongRopeRotary(**{"short_factor": (1.0, 1.3, 1.7, 2.0), "long_factor": (1.0, 2.0, 4.0, 8.0),
                             "original_max_position_embeddings": 16, **overrides})


ROTARIES = {
    "none": NoRotary(),
    "default": DefaultRotary(theta=10000.0),
    "default_partial": DefaultRotary(fraction=0.5),
    "linear": LinearRotary(factor=2.0),
    "dynamic": DynamicRotary(factor=2.0),
    "llama3": Llama3Rotary(factor=8.0, original_max_position_embeddings=16, theta=500000.0),
    "yarn": YarnRotary(original_max_position_embeddings=16),
    "yarn_mscale": YarnRotary(factor=4.0, original_max_position_embeddings=16, mscale=0.9, mscale_all_dim=0.7, truncate=False),
    "longrope": longrope(),
    "longrope_partial": LongRopeRotary(fraction=0.5, short_factor=(1.0, 1.5), long_factor=(2.0, 4.0),
                                       original_max_position_embeddings=16, factor=3.0),
}

MOE = MoEConfig(experts=4, top_k=2, intermediate=16)
MOE_SHARED = MoEConfig(experts=3, top_k=2, intermediate=16, normalize_top_k=False, shared_intermediate=24, shared_gate=True)

#: name -> config; every feature the native model implements appears at least once.
CONFIGS = {
    "llama": model(block()),
    "llama_tied": model(block(), tied=True),
    "mha_biases": model(block(kv_heads=4, q_bias=True, k_bias=True, v_bias=True, o_bias=True, mlp=MLPConfig(48, bias=True))),
    "mqa_qkv_bias": model(block(kv_heads=1, q_bias=True, k_bias=True, v_bias=True)),
    "post_full_qk_norm": model(block("post", qk_norm=RMSNormConfig(1e-6), qk_norm_scope="full")),
    "sandwich_gemma": model(block("sandwich", qk_norm=RMSNormConfig(1e-6), window=5, logit_softcap=20.0, softmax_scale=0.3,
                                  mlp=MLPConfig(48, activation="gelu_tanh")),
                            block("sandwich", qk_norm=RMSNormConfig(1e-6), rotary=DefaultRotary(theta=1e6),
                                  mlp=MLPConfig(48, activation="gelu_tanh")),
                            layers=3, tied=True, multiplier=HIDDEN ** 0.5, final_softcap=15.0),
    "parallel_neox": model(block("parallel", norm=LayerNormConfig(1e-5, True), kv_heads=4, q_bias=True, k_bias=True, v_bias=True,
                                 o_bias=True, rotary=DefaultRotary(fraction=0.25), mlp=MLPConfig(48, gated=False, activation="gelu", bias=True))),
    "layernorm_nobias_relu": model(block(norm=LayerNormConfig(1e-5, False), mlp=MLPConfig(48, gated=False, activation="relu"))),
    "layernorm_qk_norm": model(block(norm=LayerNormConfig(1e-5, True), qk_norm=LayerNormConfig(1e-5, True))),
    "moe": model(block(mlp=MOE)),
    "moe_shared_gate": model(block(q_bias=True, k_bias=True, v_bias=True, mlp=MOE_SHARED)),
    "moe_shared_nogate": model(block(mlp=MoEConfig(experts=3, top_k=1, intermediate=16, shared_intermediate=24))),
    "hetero_mlp_moe": model(block(), block(mlp=MOE), layers=3),
    **{f"rotary_{name}": model(block(rotary=rot)) for name, rot in ROTARIES.items()},
}
