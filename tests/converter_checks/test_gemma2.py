"""The gemma2 converter against transformers' Gemma2Config / Gemma2ForCausalLM."""
from __future__ import annotations

import dataclasses

import torch

import native
from arch_cases import (
    assert_hf_roundtrip, attention, small_norms, standard_tests, with_attention, with_layer,
    with_layers,
)
from converters.hf_reference import exact_float64
from converters.gemma2 import FULL, SLIDING, Gemma2Converter
from gemma_cases import block, model
from strategies import _hf_common as hc
from strategies import gemma2 as strategy

CONVERTER = Gemma2Converter()
EXAMPLES = strategy.hf_examples()


def sandwich(**kw) -> native.BlockConfig:
    return block(placement="sandwich", **kw)


ALTERNATING = [sandwich(window=3, softcap=50.0, scale=12 ** -0.5), sandwich(softcap=50.0, scale=12 ** -0.5)]
FORWARD_CASES = {
    "alternating_softcaps_qpas": model(ALTERNATING * 2, final_softcap=30.0),
    "no_caps_untied_exact_gelu": model([sandwich(window=2, activation="gelu"), sandwich(activation="gelu")],
                                       tied=False),
    "window_1_mqa_biases": model([sandwich(window=1, heads=4, kv_heads=1, bias=True, softcap=5.0), sandwich(
        heads=4, kv_heads=1, bias=True, softcap=5.0)], final_softcap=3.0),
    "arbitrary_layer_types_yarn": model([sandwich(window=4, rotary=r) if s else sandwich(rotary=r) for s, r in zip(
        (False, True, True), [native.YarnRotary(theta=1000.0, factor=4.0, original_max_position_embeddings=16)] * 3)]),
    "all_sliding_dynamic": model([sandwich(window=5, rotary=native.DynamicRotary(theta=100.0, factor=2.0))] * 2,
                                 max_position=12),
    "gemma-2-2b-small": CONVERTER.import_config(EXAMPLES[2]),
}
BASE = FORWARD_CASES["alternating_softcaps_qpas"]
REFUSALS = [
    ("attention.window", with_layers(BASE, lambda i, b: attention(b, window=2 + i) if b.attention.window else b)),
    ("attention.softmax_scale", with_attention(BASE, softmax_scale=0.3)),
    ("attention.softmax_scale", with_attention(BASE, softmax_scale=8 ** -0.5)),
    ("attention.logit_softcap", with_layers(BASE, lambda i, b: attention(b, logit_softcap=10.0 + i))),
    ("placement", with_layer(BASE, placement="pre")),
    ("attention.qk_norm", with_attention(BASE, qk_norm=native.RMSNormConfig(1e-6, zero_centered=True))),
    ("hidden_size", dataclasses.replace(BASE, hidden_size=34, embeddings=native.EmbeddingConfig(61, 34 ** 0.5))),
]
HF_REFUSALS = [(key, {**CONVERTER.export_config(BASE), **extra}) for key, extra in [
    ("use_bidirectional_attention", {"use_bidirectional_attention": True}),
    ("sliding_window", {"sliding_window": None}),
    ("sliding_window", {"sliding_window": 0}),
    ("layer_types", {"layer_types": [SLIDING, "chunked_attention", FULL, SLIDING]}),
    ("layer_types", {"layer_types": [SLIDING]}),
    ("query_pre_attn_scalar", {"query_pre_attn_scalar": 144.0}),
    ("num_attention_heads", {"num_attention_heads": 5, "num_key_value_heads": 5}),
]]


def check_example(cfg: native.ModelConfig) -> None:
    assert cfg.metadata.get("cache_implementation", "hybrid") == "hybrid"


globals().update(standard_tests(
    CONVERTER, FORWARD_CASES, hf_examples=EXAMPLES, check_example=check_example,
    example_ids=hc.example_ids(EXAMPLES, ("default", "gemma-2-2b", "gemma-2-2b-small")), refusals=REFUSALS,
    hf_refusals=HF_REFUSALS, dtypes=(torch.float64, torch.float32), exact_hf=exact_float64, redraw=small_norms))


def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("gemma2").to_dict())
    first, second = cfg.decoder.layer(0), cfg.decoder.layer(1)
    assert first.placement == "sandwich" and first.attention.window == 4096 and second.attention.window is None
    assert first.attention.logit_softcap == 50.0 and cfg.head.final_softcap == 30.0
    assert first.attention.softmax_scale is None  # query_pre_attn_scalar 256 == head_dim
    assert cfg.decoder.pattern == (0, 1) * 13


def test_real_config_carries_inert_keys():
    cfg = CONVERTER.import_config(strategy.GEMMA2_2B)
    assert cfg.metadata["hidden_act"] == "gelu_pytorch_tanh" and cfg.metadata["cache_implementation"] == "hybrid"
    assert cfg.decoder.layer(0).mlp.activation == "gelu_tanh"


def test_scaled_down_real_config_alternates_windows():
    assert [b.attention.window for b in FORWARD_CASES["gemma-2-2b-small"].decoder.layers()] == [3, None, 3]


def test_query_pre_attn_scalar():
    hf = CONVERTER.export_config(BASE)
    assert hf["query_pre_attn_scalar"] == 12 and hf["head_dim"] == 8
    cfg = CONVERTER.import_config({**hf, "query_pre_attn_scalar": 8})
    assert cfg.decoder.layer(0).attention.softmax_scale is None
    assert CONVERTER.export_config(cfg)["query_pre_attn_scalar"] == 8


def test_layer_types_default_and_explicit():
    hf = CONVERTER.export_config(FORWARD_CASES["arbitrary_layer_types_yarn"])
    assert hf["layer_types"] == [FULL, SLIDING, SLIDING] and hf["sliding_window"] == 4
    derived = {k: v for k, v in hf.items() if k != "layer_types"}
    assert [b.attention.window for b in CONVERTER.import_config(derived).decoder.layers()] == [4, None, 4]


def test_inert_window_is_carried():
    cfg = model([sandwich()] * 2)
    hf = CONVERTER.export_config(cfg)
    assert hf["layer_types"] == [FULL, FULL] and hf["sliding_window"] == 4096
    back = CONVERTER.import_config({**hf, "sliding_window": None})
    assert back.metadata["sliding_window"] is None and CONVERTER.export_config(back)["sliding_window"] is None


def test_sandwich_norms_map_to_gemma2_names_as_they_are():
    state = native.random_state(BASE, 0)
    hf = dict(CONVERTER.export_weights(BASE, state))
    for native_name, hf_name in (("attn_norm", "input_layernorm"), ("attn_post_norm", "post_attention_layernorm"),
                                 ("mlp_norm", "pre_feedforward_layernorm"), ("mlp_post_norm", "post_feedforward_layernorm")):
        assert torch.equal(hf[f"model.layers.2.{hf_name}.weight"], state[f"layers.2.{native_name}.weight"])
