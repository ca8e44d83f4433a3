"""The gpt_neox converter against transformers' GPTNeoXConfig / GPTNeoXForCausalLM."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import native
from arch_cases import (
    assert_hf_roundtrip, hf_disk_state, import_refusal, refusal, standard_tests, with_attention, with_layer, with_mlp,
)
from converters import ConversionError
from converters.gpt_neox import GPTNeoXConverter
from strategies import gpt_neox as strategy

CONVERTER = GPTNeoXConverter()
LN = native.LayerNormConfig(eps=1e-5, bias=True)


def model(*, placement="parallel", heads=4, head_dim=8, bias=True, rotary=native.DefaultRotary(theta=100.0, fraction=0.25),
          tied=False, activation="gelu") -> native.ModelConfig:
    block = native.BlockConfig(
        placement=placement, norm=LN,
        attention=native.AttentionConfig(heads=heads, kv_heads=heads, head_dim=head_dim, q_bias=bias, k_bias=bias,
                                         v_bias=bias, o_bias=bias, rotary=rotary),
        mlp=native.MLPConfig(intermediate=40, gated=False, activation=activation, bias=True))
    return native.ModelConfig(hidden_size=heads * head_dim, max_position_embeddings=32,
                              embeddings=native.EmbeddingConfig(45), decoder=native.DecoderConfig.from_layers([block] * 2),
                              final_norm=LN, head=native.HeadConfig(tied=tied))


FORWARD_CASES = {
    "parallel_quarter_rotary": model(),
    "sequential_tied_no_bias": model(placement="pre", bias=False, tied=True, head_dim=6,
                                     rotary=native.DefaultRotary(theta=500.0, fraction=2 / 3)),
    "parallel_full_dynamic": model(heads=3, rotary=native.DynamicRotary(theta=100.0, factor=2.0), activation="gelu_tanh"),
}


def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("gpt_neox").to_dict())
    block = cfg.decoder.blocks[0]
    assert block.placement == "parallel" and block.attention.rotary.fraction == 0.25
    assert block.attention.q_bias and block.mlp.bias and block.mlp.activation == "gelu"


def test_legacy_rope_keys():
    hf = {"model_type": "gpt_neox", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 8, "rotary_emb_base": 500, "rotary_pct": 0.5,
          "rope_scaling": {"type": "linear", "factor": 2.0}}
    rotary = CONVERTER.import_config(hf).decoder.blocks[0].attention.rotary
    assert rotary == native.LinearRotary(theta=500.0, fraction=0.5, factor=2.0)
    assert_hf_roundtrip(CONVERTER, hf)


@pytest.mark.parametrize("key", ["rope_theta", "partial_rotary_factor"])
def test_top_level_keys_gpt_neox_ignores_are_carried_not_read(key):
    hf = {"model_type": "gpt_neox", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 8, key: 0.5}
    cfg = CONVERTER.import_config(hf)
    assert cfg.decoder.blocks[0].attention.rotary == native.DefaultRotary(
        theta=10000.0, fraction=hf.get("rotary_pct", 0.25))
    assert CONVERTER.export_config(cfg)[key] == 0.5
    assert_hf_roundtrip(CONVERTER, hf)


def test_legacy_contradiction_is_refused():
    hf = {"model_type": "gpt_neox", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 8, "rotary_pct": 0.5,
          "rope_parameters": {"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": 0.25}}
    import_refusal(CONVERTER, hf, "rotary_pct")


BASE = FORWARD_CASES["parallel_quarter_rotary"]
REFUSALS = [
    ("placement", with_layer(BASE, placement="post")),
    ("kv_heads", with_attention(BASE, kv_heads=2)),
    ("attention_bias", with_attention(BASE, v_bias=False)),
    ("bias", with_mlp(BASE, bias=False)),
    ("gated", with_mlp(BASE, gated=True)),
    ("bias", with_layer(BASE, norm=native.LayerNormConfig(eps=1e-5, bias=False))),
    ("attention.window", with_attention(BASE, window=3)),
]

globals().update(standard_tests(CONVERTER, FORWARD_CASES, hf_examples=strategy.hf_examples(), refusals=REFUSALS,
                                weight_seed=5))


def test_free_head_dim_is_refused():
    refusal(CONVERTER, dataclasses.replace(BASE, hidden_size=BASE.hidden_size + 2), "attention.head_dim")


def test_disk_names_embed_out_and_tied():
    untied = CONVERTER.hf_shapes(BASE)
    assert "embed_out.weight" in untied and "lm_head.weight" not in untied
    assert untied["gpt_neox.layers.0.attention.query_key_value.weight"] == (3 * BASE.hidden_size, BASE.hidden_size)
    tied = CONVERTER.hf_shapes(FORWARD_CASES["sequential_tied_no_bias"])
    assert "embed_out.weight" not in tied
    assert "gpt_neox.layers.0.attention.query_key_value.bias" not in tied
    assert "gpt_neox.layers.0.mlp.dense_h_to_4h.bias" in tied


def test_legacy_buffers_are_dropped_on_import():
    hf = CONVERTER.export_config(BASE)
    source = hf_disk_state(hf, seed=6)
    for i in range(BASE.num_layers):
        source[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
        source[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        source[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.rand(1)
    ours = dict(CONVERTER.import_weights(BASE, source))
    assert sorted(ours) == sorted(native.state_shapes(BASE))


def test_unknown_tensor_is_still_refused():
    hf = CONVERTER.export_config(BASE)
    source = hf_disk_state(hf, seed=6)
    source["gpt_neox.layers.0.attention.extra"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="attention.extra"):
        dict(CONVERTER.import_weights(BASE, source))

