"""The phi3 converter against transformers' Phi3Config / Phi3ForCausalLM."""
from __future__ import annotations

import dataclasses

import torch

import native
from arch_cases import (
    assert_hf_roundtrip, assert_weights_roundtrip, forward_check, import_refusal, refusal, standard_tests,
    with_attention, with_layer, with_mlp,
)
from converters.phi3 import Phi3Converter
from strategies import phi3 as strategy
from strategies._hf_common import real_config

CONVERTER = Phi3Converter()
IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def model(block: native.BlockConfig, *, hidden: int, layers: int = 2, vocab: int = 53, tied: bool = False,
          max_position: int = 64) -> native.ModelConfig:
    return native.ModelConfig(hidden_size=hidden, max_position_embeddings=max_position,
                              embeddings=native.EmbeddingConfig(vocab), decoder=native.DecoderConfig.from_layers([block] * layers),
                              final_norm=block.norm, head=native.HeadConfig(tied=tied), metadata=dict(IDS))


def block(rotary, *, heads=4, kv_heads=2, head_dim=8, window=None, activation="silu") -> native.BlockConfig:
    return native.BlockConfig(
        placement="pre", norm=native.RMSNormConfig(eps=1e-5),
        attention=native.AttentionConfig(heads=heads, kv_heads=kv_heads, head_dim=head_dim, window=window, rotary=rotary),
        mlp=native.MLPConfig(intermediate=24, gated=True, activation=activation))


LONGROPE = native.LongRopeRotary(theta=500.0, fraction=0.5, short_factor=(1.0, 1.5), long_factor=(3.0, 7.0),
                                 original_max_position_embeddings=8, factor=4.0)
FORWARD_CASES = {
    "default_gqa_head_dim_window": model(block(native.DefaultRotary(theta=100.0), head_dim=6, window=5), hidden=20),
    "default_partial_tied": model(block(native.DefaultRotary(theta=100.0, fraction=0.25), kv_heads=4, activation="gelu_tanh"),
                                  hidden=32, tied=True),
    "longrope_partial_window": model(block(LONGROPE, window=6), hidden=32),
    "longrope_implicit_factor": model(block(dataclasses.replace(LONGROPE, factor=None, attention_factor=1.3, fraction=1.0,
                                                                short_factor=(1.0, 1.1, 1.3, 2.0),
                                                                long_factor=(2.0, 3.0, 5.0, 9.0))), hidden=32),
}


# ------------------------------------------------------------------------------------ configs
def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("phi3").to_dict())
    assert cfg.decoder.blocks[0].attention.rotary == native.DefaultRotary(theta=10000.0)


def test_real_config_roundtrips():
    real = real_config(strategy.REAL)
    cfg = assert_hf_roundtrip(CONVERTER, real)
    a = cfg.decoder.blocks[0].attention
    assert (a.heads, a.kv_heads, a.head_dim, a.window) == (32, 32, 96, 2047)
    assert cfg.metadata["original_max_position_embeddings"] == 4096  # inert with default rope: carried
    assert cfg.metadata["pad_token_id"] == 32000


def test_v4_longrope_reads_top_level_original_and_legacy_names():
    hf = {"model_type": "phi3", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "max_position_embeddings": 64, "original_max_position_embeddings": 8,
          "rope_theta": 100.0, "partial_rotary_factor": 0.5, "pad_token_id": 0, "eos_token_id": 1,
          "rope_scaling": {"type": "su", "short_factor": [1.0, 2.0], "long_factor": [3.0, 4.0],
                           "original_max_position_embeddings": 4096}}
    cfg = CONVERTER.import_config(hf)
    rotary = cfg.decoder.blocks[0].attention.rotary
    # Phi3Config gives the top-level original_max_position_embeddings priority; "su" means longrope
    assert rotary == native.LongRopeRotary(theta=100.0, fraction=0.5, short_factor=(1.0, 2.0), long_factor=(3.0, 4.0),
                                           original_max_position_embeddings=8)
    out = CONVERTER.export_config(cfg)
    assert out["partial_rotary_factor"] == 0.5 and out["original_max_position_embeddings"] == 8
    assert out["rope_parameters"]["original_max_position_embeddings"] == 8


def test_partial_rotary_contradiction_is_refused():
    hf = {"model_type": "phi3", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "partial_rotary_factor": 0.5,
          "rope_parameters": {"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": 0.25}}
    import_refusal(CONVERTER, hf, "partial_rotary_factor")


def test_other_rope_types_are_refused():
    hf = {"model_type": "phi3", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "rope_scaling": {"type": "linear", "factor": 2.0}}
    import_refusal(CONVERTER, hf, "rope_type")


# ----------------------------------------------------------------------------------- refusals
BASE = FORWARD_CASES["default_gqa_head_dim_window"]
REFUSALS = [
    ("attention.q_bias", with_attention(BASE, q_bias=True)),
    ("attention.qk_norm", with_attention(BASE, qk_norm=native.RMSNormConfig())),
    ("gated", with_mlp(BASE, gated=False)),
    ("bias", with_mlp(BASE, bias=True)),
    ("placement", with_layer(BASE, placement="post")),
    ("norm", with_layer(BASE, norm=native.LayerNormConfig(eps=1e-5))),
    ("attention.rotary", with_attention(BASE, rotary=native.LinearRotary(factor=2.0))),
    ("attention.window", with_attention(BASE, 1, window=None)),  # per-layer windows
]

globals().update(standard_tests(CONVERTER, FORWARD_CASES, hf_examples=strategy.hf_examples(), refusals=REFUSALS,
                                weight_seed=1))


def test_longrope_with_free_head_dim_is_refused():
    cfg = model(block(LONGROPE, head_dim=8), hidden=30)
    refusal(CONVERTER, cfg, "attention.head_dim", "longrope")


def test_forward_short_sequence_uses_short_factor():
    cfg = FORWARD_CASES["longrope_partial_window"]
    for length in (7, 8, 9):  # around original_max_position_embeddings = 8
        result = forward_check(CONVERTER, cfg, length=length)
        assert result.ok, result.describe()


def test_real_config_weights_roundtrip_scaled_down():
    cfg = CONVERTER.import_config(strategy.hf_examples()[1])
    assert_weights_roundtrip(CONVERTER, cfg, seed=2, dtype=torch.bfloat16)


def test_fused_layouts_on_disk():
    cfg = FORWARD_CASES["default_gqa_head_dim_window"]
    shapes = CONVERTER.hf_shapes(cfg)
    a = cfg.decoder.blocks[0].attention
    assert shapes["model.layers.0.self_attn.qkv_proj.weight"] == ((a.heads + 2 * a.kv_heads) * a.head_dim, cfg.hidden_size)
    assert shapes["model.layers.0.mlp.gate_up_proj.weight"] == (2 * 24, cfg.hidden_size)

