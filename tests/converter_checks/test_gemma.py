"""The gemma converter against transformers' GemmaConfig / GemmaForCausalLM."""
from __future__ import annotations

import dataclasses

import torch

import native
from arch_cases import (
    assert_hf_roundtrip, import_refusal, small_norms, standard_tests, with_attention, with_layer,
)
from converters.hf_reference import exact_float64
from converters.gemma import GemmaConverter
from gemma_cases import block, model
from strategies import _hf_common as hc
from strategies import gemma as strategy

CONVERTER = GemmaConverter()
EXAMPLES = strategy.hf_examples()

FORWARD_CASES = {
    "gqa_tied": model([block(), block()]),
    "mqa_untied_biases_silu": model([block(heads=3, kv_heads=1, head_dim=6, bias=True, activation="silu")] * 2,
                                    hidden=20, tied=False),
    "mha_linear_rope_odd_hidden": model([block(heads=2, kv_heads=2, head_dim=10, rotary=native.LinearRotary(
        theta=500.0, factor=2.0), activation="relu")] * 3, hidden=27, vocab=53),
    "llama3_rope": model([block(rotary=native.Llama3Rotary(theta=500.0, factor=4.0, original_max_position_embeddings=8))] * 2),
    "gemma-7b-small": CONVERTER.import_config(EXAMPLES[2]),
}
BASE = FORWARD_CASES["gqa_tied"]
REFUSALS = [
    ("embeddings.multiplier", dataclasses.replace(BASE, embeddings=native.EmbeddingConfig(BASE.vocab_size, None))),
    ("embeddings.multiplier", dataclasses.replace(BASE, embeddings=native.EmbeddingConfig(BASE.vocab_size, 5.0))),
    ("activation", with_layer(BASE, mlp=native.MLPConfig(intermediate=40, activation="gelu"))),
    ("placement", with_layer(BASE, placement="sandwich")),
    ("attention.window", with_attention(BASE, window=4)),
    ("attention.logit_softcap", with_attention(BASE, logit_softcap=20.0)),
    ("attention.softmax_scale", with_attention(BASE, softmax_scale=0.25)),
    ("head.final_softcap", dataclasses.replace(BASE, head=native.HeadConfig(tied=True, final_softcap=30.0))),
]
HF_REFUSALS = [(key, {**CONVERTER.export_config(BASE), **extra}) for key, extra in [
    ("use_bidirectional_attention", {"use_bidirectional_attention": True}),
    ("hidden_activation", {"hidden_act": "silu", "hidden_activation": "gelu_pytorch_tanh"}),
    ("hidden_act", {"hidden_act": "gelu_new"}),
    ("partial_rotary_factor", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}}),
]]


#: absent keys take GemmaConfig's defaults (16 KV heads, head_dim 256, tied, 8192 positions)
CLASS_DEFAULTS = ({"model_type": "gemma", "vocab_size": 11, "hidden_size": 64, "intermediate_size": 4,
                   "num_hidden_layers": 1, "num_attention_heads": 32}, {
    "layer0.attention.kv_heads": "num_key_value_heads", "layer0.attention.head_dim": "head_dim",
    "cfg.head.tied": "tie_word_embeddings", "cfg.max_position_embeddings": "max_position_embeddings"})


def check_example(cfg: native.ModelConfig) -> None:
    assert cfg.decoder.blocks[0].mlp.activation == "gelu_tanh"  # gemma-7b's legacy "gelu" is the tanh one


globals().update(standard_tests(
    CONVERTER, FORWARD_CASES, hf_examples=EXAMPLES, check_example=check_example,
    example_ids=hc.example_ids(EXAMPLES, ("default", "gemma-7b", "gemma-7b-small")), refusals=REFUSALS,
    hf_refusals=HF_REFUSALS, dtypes=(torch.float64, torch.float32), exact_hf=exact_float64, redraw=small_norms,
    class_defaults=CLASS_DEFAULTS))


def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("gemma").to_dict())
    b = cfg.decoder.blocks[0]
    assert cfg.head.tied and cfg.embeddings.multiplier == 3072 ** 0.5
    assert (b.placement, b.attention.head_dim, b.attention.kv_heads, b.mlp.activation) == ("pre", 256, 16, "gelu_tanh")
    assert b.norm == native.RMSNormConfig(eps=1e-6, zero_centered=True) and b.attention.softmax_scale is None


def test_hidden_activation_agreeing_with_hidden_act_is_carried():
    hf = {**CONVERTER.export_config(BASE), "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}
    cfg = CONVERTER.import_config(hf)
    assert cfg.metadata["hidden_activation"] == "gelu_pytorch_tanh"
    assert CONVERTER.export_config(cfg)["hidden_activation"] == "gelu_pytorch_tanh"


def test_hidden_activation_is_checked_against_the_default_hidden_act():
    hf = {k: v for k, v in CONVERTER.export_config(BASE).items() if k != "hidden_act"}
    import_refusal(CONVERTER, {**hf, "hidden_activation": "silu"}, "hidden_activation")
    assert CONVERTER.import_config({**hf, "hidden_activation": "gelu_pytorch_tanh"}).metadata["hidden_activation"]


def test_zero_centred_norm_weights_are_renamed_as_they_are():
    state = native.random_state(BASE, 0)
    hf = dict(CONVERTER.export_weights(BASE, state))
    assert torch.equal(hf["model.layers.1.post_attention_layernorm.weight"], state["layers.1.mlp_norm.weight"])
    assert torch.equal(hf["model.norm.weight"], state["final_norm.weight"])
    assert "lm_head.weight" not in hf
