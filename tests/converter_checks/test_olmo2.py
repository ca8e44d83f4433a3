"""The olmo2 converter against transformers' Olmo2Config / Olmo2ForCausalLM."""
from __future__ import annotations

import native
from arch_cases import assert_hf_roundtrip, standard_tests, with_attention, with_layer, with_mlp
from converters.olmo2 import Olmo2Converter
from strategies import olmo2 as strategy

CONVERTER = Olmo2Converter()
IDS = {"bos_token_id": None, "eos_token_id": 2, "pad_token_id": 1}
RMS = native.RMSNormConfig(eps=1e-6)


def model(*, hidden=24, heads=4, kv_heads=2, head_dim=6, bias=True, rotary=native.DefaultRotary(theta=100.0),
          tied=False, layers=2) -> native.ModelConfig:
    block = native.BlockConfig(
        placement="post", norm=RMS,
        attention=native.AttentionConfig(heads=heads, kv_heads=kv_heads, head_dim=head_dim, q_bias=bias, k_bias=bias,
                                         v_bias=bias, o_bias=bias, qk_norm=RMS, qk_norm_scope="full", rotary=rotary),
        mlp=native.MLPConfig(intermediate=20))
    return native.ModelConfig(hidden_size=hidden, max_position_embeddings=32, embeddings=native.EmbeddingConfig(41),
                              decoder=native.DecoderConfig.from_layers([block] * layers), final_norm=RMS,
                              head=native.HeadConfig(tied=tied), metadata=dict(IDS))


FORWARD_CASES = {
    "gqa_bias_head_dim": model(),
    "mha_no_bias_tied": model(hidden=32, heads=4, kv_heads=4, head_dim=8, bias=False, tied=True),
    "mqa_yarn": model(kv_heads=1, rotary=native.YarnRotary(theta=100.0, factor=4.0, original_max_position_embeddings=8)),
}


def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("olmo2").to_dict())
    block = cfg.decoder.blocks[0]
    assert block.placement == "post" and block.attention.qk_norm_scope == "full"


BASE = FORWARD_CASES["gqa_bias_head_dim"]
REFUSALS = [
    ("placement", with_layer(BASE, placement="pre")),
    ("attention.qk_norm_scope", with_attention(BASE, qk_norm_scope="head")),
    ("attention.qk_norm", with_attention(BASE, qk_norm=None)),
    ("attention_bias", with_attention(BASE, o_bias=False)),
    ("bias", with_mlp(BASE, bias=True)),
    ("attention.window", with_attention(BASE, window=4)),
    ("fraction", with_attention(BASE, rotary=native.DefaultRotary(fraction=2 / 3))),
    ("rms_norm_eps", with_attention(BASE, qk_norm=native.RMSNormConfig(eps=1e-5))),
]

globals().update(standard_tests(CONVERTER, FORWARD_CASES, hf_examples=strategy.hf_examples(), refusals=REFUSALS,
                                weight_seed=3))


def test_norm_names_on_disk():
    shapes = CONVERTER.hf_shapes(BASE)
    a = BASE.decoder.blocks[0].attention
    assert shapes["model.layers.0.self_attn.q_norm.weight"] == (a.heads * a.head_dim,)
    assert shapes["model.layers.0.self_attn.k_norm.weight"] == (a.kv_heads * a.head_dim,)
    assert "model.layers.0.post_feedforward_layernorm.weight" in shapes
    assert "model.layers.0.input_layernorm.weight" not in shapes

