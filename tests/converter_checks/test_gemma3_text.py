"""The gemma3_text converter against transformers' Gemma3TextConfig / Gemma3ForCausalLM."""
from __future__ import annotations

import torch

import native
from arch_cases import (
    assert_hf_roundtrip, attention, small_norms, standard_tests, with_attention, with_layers,
)
from converters.hf_reference import exact_float64
from converters.gemma3_text import FULL, SLIDING, Gemma3TextConverter
from gemma_cases import block, model
from strategies import _hf_common as hc
from strategies import gemma3_text as strategy

CONVERTER = Gemma3TextConverter()
EXAMPLES = strategy.hf_examples()
LOCAL = native.DefaultRotary(theta=10000.0)
GLOBAL = native.LinearRotary(theta=1_000_000.0, factor=8.0)


def gemma3(window: int | None, rotary, **kw) -> native.BlockConfig:
    return block(placement="sandwich", qk_norm=True, window=window, rotary=rotary, **kw)


def five_to_one(layers: int = 6, window: int = 3, local=LOCAL, global_=GLOBAL, **kw) -> list[native.BlockConfig]:
    return [gemma3(None, global_, **kw) if (i + 1) % 6 == 0 else gemma3(window, local, **kw) for i in range(layers)]


FORWARD_CASES = {
    "five_to_one_linear_global": model(five_to_one()),
    "alternating_qpas_softcap_untied": model([gemma3(2, LOCAL, scale=20 ** -0.5), gemma3(None, GLOBAL, scale=20 ** -0.5)] * 2,
                                             tied=False, final_softcap=10.0),
    "global_yarn_local_default_mqa_bias": model(
        [gemma3(4, native.DefaultRotary(theta=100.0), heads=4, kv_heads=1, bias=True),
         gemma3(None, native.YarnRotary(theta=5000.0, factor=4.0, original_max_position_embeddings=16), heads=4,
                kv_heads=1, bias=True)]),
    "local_longrope_global_llama3": model(
        [gemma3(3, native.LongRopeRotary(theta=500.0, short_factor=(1.0, 1.5, 2.0, 4.0), long_factor=(2.0, 3.0, 5.0, 8.0),
                                         original_max_position_embeddings=8, factor=8.0)),
         gemma3(None, native.Llama3Rotary(theta=50000.0, factor=8.0, original_max_position_embeddings=8))],
        max_position=64),
    "all_global_dynamic": model([gemma3(None, native.DynamicRotary(theta=1000.0, factor=2.0))] * 2, max_position=10),
    "all_sliding_window_1": model([gemma3(1, LOCAL)] * 2),
    "1b-small": CONVERTER.import_config(EXAMPLES[3]),
    "4b-small": CONVERTER.import_config(EXAMPLES[4]),
}
BASE = FORWARD_CASES["five_to_one_linear_global"]
REFUSALS = [
    ("attention.rotary", with_layers(BASE, lambda i, b: attention(b, rotary=native.DefaultRotary(theta=100.0 + i))
                                     if b.attention.window else b)),
    ("attention.logit_softcap", with_attention(BASE, logit_softcap=50.0)),
    ("attention.qk_norm", with_attention(BASE, qk_norm=None)),
    ("attention.qk_norm_scope", with_attention(BASE, qk_norm_scope="full")),
    ("rms_norm_eps", with_attention(BASE, qk_norm=native.RMSNormConfig(1e-5, zero_centered=True))),
    ("truncate", with_layers(BASE, lambda i, b: b if b.attention.window else attention(b, rotary=native.YarnRotary(
        theta=1e4, factor=4.0, original_max_position_embeddings=16, truncate=False)))),
    ("fraction", with_attention(BASE, rotary=native.DefaultRotary(theta=1e4, fraction=0.5))),
]
HF_REFUSALS = [(key, {**CONVERTER.export_config(BASE), **extra}) for key, extra in [
    ("use_bidirectional_attention", {"use_bidirectional_attention": True}),
    ("attn_logit_softcapping", {"attn_logit_softcapping": 50.0}),
    ("rope_parameters", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}),
    ("rope_theta", {"rope_theta": 5.0}),  # contradicts rope_parameters.full_attention.rope_theta
    ("rope_local_base_freq", {"rope_local_base_freq": 5.0}),
    ("rope_scaling", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("truncate", {"rope_parameters": {SLIDING: {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                                                "original_max_position_embeddings": 16, "truncate": False}}}),
    ("num_attention_heads", {"num_attention_heads": 6, "num_key_value_heads": 2}),
]]

globals().update(standard_tests(
    CONVERTER, FORWARD_CASES, hf_examples=EXAMPLES,
    example_ids=hc.example_ids(EXAMPLES, ("default", "1b", "4b", "1b-small", "4b-small")), refusals=REFUSALS,
    hf_refusals=HF_REFUSALS, dtypes=(torch.float64, torch.float32), exact_hf=exact_float64, redraw=small_norms))


def test_transformers_default_config_roundtrips():
    from transformers import AutoConfig

    cfg = assert_hf_roundtrip(CONVERTER, AutoConfig.for_model("gemma3_text").to_dict())
    layers = cfg.decoder.layers()
    assert [b.attention.window is None for b in layers] == [(i + 1) % 6 == 0 for i in range(26)]
    assert layers[0].attention.rotary == native.DefaultRotary(theta=10000.0)
    assert layers[5].attention.rotary == native.DefaultRotary(theta=1_000_000.0)
    assert layers[0].attention.qk_norm == native.RMSNormConfig(eps=1e-6, zero_centered=True) and layers[0].attention.logit_softcap is None
    assert cfg.head.final_softcap is None and cfg.head.tied


def test_scaled_down_real_configs_are_five_to_one():
    for name in ("1b-small", "4b-small"):
        assert [b.attention.window for b in FORWARD_CASES[name].decoder.layers()] == [3] * 5 + [None], name


def test_v4_rope_keys_mean_global_theta_local_theta_and_global_scaling():
    cfg = CONVERTER.import_config(strategy.GEMMA3_4B_TEXT)
    assert cfg.decoder.layer(0).attention.rotary == native.DefaultRotary(theta=10000.0)
    assert cfg.decoder.layer(5).attention.rotary == native.LinearRotary(theta=1_000_000.0, factor=8.0)
    hf = CONVERTER.export_config(cfg)
    assert hf["rope_parameters"] == {SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
                                     FULL: {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 8.0}}
    assert not {"rope_theta", "rope_scaling", "rope_local_base_freq"} & set(hf)
    assert hf["sliding_window_pattern"] == 6 and len(hf["layer_types"]) == 34


def test_sliding_window_pattern_derives_layer_types():
    hf = CONVERTER.export_config(model(five_to_one(layers=4)))
    derived = {k: v for k, v in hf.items() if k != "layer_types"}
    cfg = CONVERTER.import_config({**derived, "sliding_window_pattern": 2})
    assert [b.attention.window for b in cfg.decoder.layers()] == [3, None, 3, None]
    assert cfg.metadata["sliding_window_pattern"] == 2


def test_unused_layer_type_rope_is_carried():
    hf = CONVERTER.export_config(FORWARD_CASES["all_sliding_window_1"])
    assert hf["layer_types"] == [SLIDING, SLIDING]
    assert hf["rope_parameters"][FULL] == {"rope_type": "default", "rope_theta": 1_000_000.0}
    custom = {"rope_type": "linear", "rope_theta": 5.0, "factor": 2.0}
    cfg = CONVERTER.import_config({**hf, "rope_parameters": {**hf["rope_parameters"], FULL: custom}})
    assert cfg.metadata["rope_parameters"] == {FULL: custom}
    assert CONVERTER.export_config(cfg)["rope_parameters"][FULL] == custom


def test_qk_norms_are_permuted_to_rotate_half_order_as_they_are():
    state = native.random_state(BASE, 0)
    hf = dict(CONVERTER.export_weights(BASE, state))
    for which in ("q", "k"):
        norm = state[f"layers.0.attn.{which}_norm.weight"]  # interleaved pairs (0,1), (2,3), ...
        assert torch.equal(hf[f"model.layers.0.self_attn.{which}_norm.weight"], torch.cat((norm[0::2], norm[1::2])))
