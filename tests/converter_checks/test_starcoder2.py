"""The starcoder2 converter against transformers' Starcoder2Config / Starcoder2ForCausalLM."""
from __future__ import annotations

import native
from arch_cases import assert_hf_roundtrip, standard_tests, with_attention, with_layer, with_mlp
from converters.starcoder2 import Starcoder2Converter
from strategies import starcoder2 as strategy

CONVERTER = Starcoder2Converter()
IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None}
LN = native.LayerNormConfig(eps=1e-5, bias=True)


def model(*, hidden=24, heads=4, kv_heads=2, head_dim=6, bias=True, window=None, activation="gelu_tanh",
          rotary=native.DefaultRotary(theta=100.0), tied=True) -> native.ModelConfig:
    block = native.BlockConfig(
        placement="pre", norm=LN,
        attention=native.AttentionConfig(heads=heads, kv_heads=kv_heads, head_dim=head_dim, q_bias=bias, k_bias=bias,
                                         v_bias=bias, o_bias=bias, window=window, rotary=rotary),
        mlp=native.MLPConfig(intermediate=40, gated=False, activation=activation, bias=bias))
    return native.ModelConfig(hidden_size=hidden, max_position_embeddings=32, embeddings=native.EmbeddingConfig(45),
                              decoder=native.DecoderConfig.from_layers([block] * 2), final_norm=LN,
                              head=native.HeadConfig(tied=tied), metadata=dict(IDS))


FORWARD_CASES = {
    "gqa_bias_window_tied": model(window=5),
    "no_bias_untied_gelu": model(bias=False, tied=False, activation="gelu", head_dim=8, hidden=30),
    "mqa_llama3": model(kv_heads=1, rotary=native.Llama3Rotary(theta=100.0, factor=4.0, original_max_position_embeddings=8)),
}


def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("starcoder2").to_dict())
    block = cfg.decoder.blocks[0]
    assert block.norm == native.LayerNormConfig(eps=1e-5, bias=True)
    assert (block.mlp.gated, block.mlp.bias, block.mlp.activation) == (False, True, "gelu_tanh")
    assert block.attention.kv_heads == 2 and cfg.head.tied


BASE = FORWARD_CASES["gqa_bias_window_tied"]
REFUSALS = [
    ("use_bias", with_mlp(BASE, bias=False)),
    ("use_bias", with_attention(BASE, k_bias=False)),
    ("gated", with_mlp(BASE, gated=True)),
    ("bias", with_layer(BASE, norm=native.LayerNormConfig(eps=1e-5, bias=False))),
    ("norm", with_layer(BASE, norm=native.RMSNormConfig(eps=1e-5))),
    ("placement", with_layer(BASE, placement="parallel")),
    ("fraction", with_attention(BASE, rotary=native.DefaultRotary(fraction=2 / 3))),
]

globals().update(standard_tests(CONVERTER, FORWARD_CASES, hf_examples=strategy.hf_examples(), refusals=REFUSALS,
                                weight_seed=4))


def test_biases_on_disk():
    shapes = CONVERTER.hf_shapes(BASE)
    for name in ("self_attn.q_proj.bias", "self_attn.o_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias",
                 "input_layernorm.bias", "post_attention_layernorm.bias"):
        assert f"model.layers.1.{name}" in shapes, name
    assert "model.norm.bias" in shapes and "lm_head.weight" not in shapes
    no_bias = CONVERTER.hf_shapes(FORWARD_CASES["no_bias_untied_gelu"])
    assert not any(n.endswith("proj.bias") or n.endswith("c_fc.bias") for n in no_bias)
    assert "model.layers.0.input_layernorm.bias" in no_bias  # LayerNorm keeps its bias regardless of use_bias

