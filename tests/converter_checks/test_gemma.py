"""The gemma converter against transformers' GemmaConfig / GemmaForCausalLM."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import native
from arch_cases import refusal
from converters import ConversionError
from converters.gemma import GemmaConverter
from gemma_cases import (
    assert_hf_roundtrip, assert_weight_roundtrips, block, forward_check, hf_model_keys, model,
)
from strategies import gemma as strategy
from strategies import _hf_common as hc

CONVERTER = GemmaConverter()

FORWARD_CASES = {
    "gqa_tied": model([block(), block()]),
    "mqa_untied_biases_silu": model([block(heads=3, kv_heads=1, head_dim=6, bias=True, activation="silu")] * 2,
                                    hidden=20, tied=False),
    "mha_linear_rope_odd_hidden": model([block(heads=2, kv_heads=2, head_dim=10, rotary=native.LinearRotary(
        theta=500.0, factor=2.0), activation="relu")] * 3, hidden=27, vocab=53),
    "llama3_rope": model([block(rotary=native.Llama3Rotary(theta=500.0, factor=4.0, original_max_position_embeddings=8))] * 2),
}


# ----------------------------------------------------------------------------------------- config
def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("gemma").to_dict())
    b = cfg.decoder.blocks[0]
    assert cfg.head.tied and cfg.embeddings.multiplier == 3072 ** 0.5
    assert (b.placement, b.attention.head_dim, b.attention.kv_heads, b.mlp.activation) == ("pre", 256, 16, "gelu_tanh")
    assert b.norm == native.RMSNormConfig(eps=1e-6, zero_centered=True) and b.attention.softmax_scale is None


@pytest.mark.parametrize("hf", strategy.hf_examples(), ids=hc.example_ids(strategy.hf_examples(), ("default", "gemma-7b", "gemma-7b-small")))
def test_example_configs_roundtrip(hf):
    cfg = assert_hf_roundtrip(CONVERTER, hf)
    assert cfg.decoder.blocks[0].mlp.activation == "gelu_tanh"  # gemma-7b's legacy "gelu" is the tanh one


def test_absent_keys_take_the_class_defaults():
    cfg = CONVERTER.import_config({"model_type": "gemma", "vocab_size": 11, "hidden_size": 64, "intermediate_size": 4,
                                   "num_hidden_layers": 1, "num_attention_heads": 32})
    a = cfg.decoder.blocks[0].attention
    assert (a.kv_heads, a.head_dim, cfg.head.tied, cfg.max_position_embeddings) == (16, 256, True, 8192)


# --------------------------------------------------------------------------------------- refusals
BASE = model([block(), block()])


@pytest.mark.parametrize("change, field", [
    (lambda c: dataclasses.replace(c, embeddings=native.EmbeddingConfig(c.vocab_size, None)), "embeddings.multiplier"),
    (lambda c: dataclasses.replace(c, embeddings=native.EmbeddingConfig(c.vocab_size, 5.0)), "embeddings.multiplier"),
    (lambda c: _blocks(c, mlp=native.MLPConfig(intermediate=40, activation="gelu")), "activation"),
    (lambda c: _blocks(c, placement="sandwich"), "placement"),
    (lambda c: _attention(c, window=4), "attention.window"),
    (lambda c: _attention(c, logit_softcap=20.0), "attention.logit_softcap"),
    (lambda c: _attention(c, softmax_scale=0.25), "attention.softmax_scale"),
    (lambda c: dataclasses.replace(c, head=native.HeadConfig(tied=True, final_softcap=30.0)), "head.final_softcap"),
])
def test_unrepresentable_native_features_are_named(change, field):
    refusal(CONVERTER, change(BASE), field)


def _blocks(cfg, **changes):
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(
        [dataclasses.replace(b, **changes) for b in cfg.decoder.layers()]))


def _attention(cfg, **changes):
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(
        [dataclasses.replace(b, attention=dataclasses.replace(b.attention, **changes)) for b in cfg.decoder.layers()]))


@pytest.mark.parametrize("extra, fragment", [
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"hidden_act": "silu", "hidden_activation": "gelu_pytorch_tanh"}, "hidden_activation"),
    ({"hidden_act": "gelu_new"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
])
def test_hf_refusals(extra, fragment):
    hf = {**CONVERTER.export_config(BASE), **extra}
    with pytest.raises(ConversionError, match=fragment):
        CONVERTER.import_config(hf)


def test_hidden_activation_agreeing_with_hidden_act_is_carried():
    hf = {**CONVERTER.export_config(BASE), "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}
    cfg = CONVERTER.import_config(hf)
    assert cfg.metadata["hidden_activation"] == "gelu_pytorch_tanh"
    assert CONVERTER.export_config(cfg)["hidden_activation"] == "gelu_pytorch_tanh"


# ---------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_weights_roundtrip_and_match_the_hf_model(name):
    cfg = FORWARD_CASES[name]
    hf_state = assert_weight_roundtrips(CONVERTER, cfg)
    assert {k: tuple(v.shape) for k, v in hf_state.items()} == hf_model_keys(CONVERTER.export_config(cfg))


def test_zero_centred_norm_weights_are_renamed_as_they_are():
    cfg = FORWARD_CASES["gqa_tied"]
    state = native.random_state(cfg, 0)
    hf = dict(CONVERTER.export_weights(cfg, state))
    assert torch.equal(hf["model.layers.1.post_attention_layernorm.weight"], state["layers.1.mlp_norm.weight"])
    assert torch.equal(hf["model.norm.weight"], state["final_norm.weight"])
    assert "lm_head.weight" not in hf


# ---------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_forward_matches_transformers(name, dtype):
    result = forward_check(CONVERTER, FORWARD_CASES[name], dtype=dtype)
    assert result.ok, result.describe()


def test_forward_of_scaled_down_real_config():
    cfg = CONVERTER.import_config(strategy.hf_examples()[2])
    result = forward_check(CONVERTER, cfg, seed=3)
    assert result.ok, result.describe()


def test_hidden_activation_is_checked_against_the_default_hidden_act():
    hf = {k: v for k, v in CONVERTER.export_config(BASE).items() if k != "hidden_act"}
    with pytest.raises(ConversionError, match="hidden_activation"):
        CONVERTER.import_config({**hf, "hidden_activation": "silu"})
    assert CONVERTER.import_config({**hf, "hidden_activation": "gelu_pytorch_tanh"}).metadata["hidden_activation"]
