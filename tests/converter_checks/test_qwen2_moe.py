"""Qwen2-MoE converter: transformers' default and Qwen1.5-MoE-A2.7B round trip; the dense/sparse
and sliding/full layer rules agree with the model transformers builds; native weights exported to
disk load into Qwen2MoeForCausalLM with equal logits (float64); a ``save_pretrained`` checkpoint
round trips bit-exact; what Qwen2-MoE cannot express is refused."""
from __future__ import annotations

import dataclasses

from arch_cases import standard_tests, with_attention, with_layer
from strategies import _hf_common as hc
from converters.qwen2_moe import Qwen2MoeConverter
from native import (
    AttentionConfig, BlockConfig, DecoderConfig, DefaultRotary, EmbeddingConfig, HeadConfig, Llama3Rotary,
    MLPConfig, ModelConfig, MoEConfig, RMSNormConfig,
)
from strategies import qwen2_moe as strategy

CONVERTER = Qwen2MoeConverter()
EXAMPLES = strategy.hf_examples()
MOE = MoEConfig(experts=5, top_k=2, intermediate=10, normalize_top_k=False, shared_intermediate=14, shared_gate=True)
DENSE = MLPConfig(intermediate=18)


def config(*, sparse=(True, False, True), windows=(None, 5, 5), bias=True, tied=False, moe=MOE,
           rotary=DefaultRotary(theta=1000.0), head_dim=8) -> ModelConfig:
    layers = []
    for is_sparse, window in zip(sparse, windows):
        attention = AttentionConfig(heads=4, kv_heads=2, head_dim=head_dim, q_bias=bias, k_bias=bias, v_bias=bias,
                                    window=window, rotary=rotary)
        layers.append(BlockConfig(norm=RMSNormConfig(1e-6), attention=attention, mlp=moe if is_sparse else DENSE))
    return ModelConfig(hidden_size=24, max_position_embeddings=64, embeddings=EmbeddingConfig(vocab_size=61),
                       decoder=DecoderConfig.from_layers(layers), final_norm=RMSNormConfig(1e-6),
                       head=HeadConfig(tied=tied))


def small(**changes) -> dict:
    base = {"model_type": "qwen2_moe", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 4, "vocab_size": 31, "intermediate_size": 12, "moe_intermediate_size": 6,
            "shared_expert_intermediate_size": 8, "num_experts": 3, "num_experts_per_tok": 2}
    return {**base, **changes}


FORWARD_CASES = {
    "mixed-windows": config(),
    "dense-ends-tied-norm-topk": config(sparse=(False, True, False), windows=(3, None, 3), bias=False, tied=True,
                                        moe=dataclasses.replace(MOE, normalize_top_k=True, top_k=3)),
    "llama3-head-dim": config(sparse=(True, True), windows=(None, None), head_dim=10,
                              rotary=Llama3Rotary(theta=500.0, factor=4.0, original_max_position_embeddings=12)),
}
BASE = FORWARD_CASES["mixed-windows"]
# Each: an HF dict (small sizes merged in) whose per-layer structure transformers decides.
STRUCTURES = {name: small(**changes) for name, changes in {
    "step2": {"decoder_sparse_step": 2},
    "step2-mlp-only": {"decoder_sparse_step": 2, "mlp_only_layers": [3, 0]},
    "mlp-only-out-of-range": {"mlp_only_layers": [1, 7]},
    "no-experts": {"num_experts": 0, "decoder_sparse_step": 3},
    "derived-windows": {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 3},
    "explicit-windows": {"use_sliding_window": True, "sliding_window": 3,
                         "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]},
    "window-unused": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 0},
    "window-disabled": {"use_sliding_window": False, "sliding_window": 6, "max_window_layers": 4},
}.items()}
REFUSALS = [
    ("o_bias", with_attention(BASE, 0, o_bias=True)),
    ("k_bias", with_attention(BASE, 0, k_bias=False)),
    ("shared_intermediate", config(moe=dataclasses.replace(MOE, shared_intermediate=None, shared_gate=False))),
    ("shared_gate", config(moe=dataclasses.replace(MOE, shared_gate=False))),
    ("experts", with_layer(BASE, 2, mlp=dataclasses.replace(MOE, experts=4))),
    ("activation", with_layer(BASE, 1, mlp=dataclasses.replace(DENSE, activation="relu"))),
    ("gated", with_layer(BASE, 1, mlp=dataclasses.replace(DENSE, gated=False))),
    ("attention.window", with_attention(BASE, 2, window=3)),
    ("qk_norm", with_attention(BASE, 0, qk_norm=RMSNormConfig(1e-6))),
]
HF_REFUSALS = [(key, small(**change)) for key, change in [
    ("use_sliding_window", {"layer_types": ["sliding_attention"] * 4, "use_sliding_window": False}),
    ("sliding_window", {"layer_types": ["sliding_attention"] * 4, "use_sliding_window": True, "sliding_window": None}),
    ("decoder_sparse_step", {"decoder_sparse_step": 0}),
    ("mlp_only_layers", {"mlp_only_layers": "0"}),
    ("head_dim", {"head_dim": None}),
    ("head_dim", {"hidden_size": 18}),  # 4 heads do not divide 18: transformers' floored default refused
    ("num_key_value_heads", {"num_key_value_heads": None}),
    ("qkv_bias", {"qkv_bias": "yes"}),
]]

globals().update(standard_tests(
    CONVERTER, FORWARD_CASES, hf_examples=EXAMPLES,
    example_ids=hc.example_ids(EXAMPLES, ("transformers-default", "Qwen1.5-MoE-A2.7B", "A2.7B-small")),
    refusals=REFUSALS, hf_refusals=HF_REFUSALS, on_disk=True, structures=STRUCTURES,
    saved=small(decoder_sparse_step=2, mlp_only_layers=[3, 0], use_sliding_window=True, sliding_window=3,
                max_window_layers=3),
    class_defaults=(small(hidden_size=64, num_attention_heads=32), {  # Qwen2MoeConfig has 16 KV heads
        "layer0.attention.kv_heads": "num_key_value_heads", "layer0.mlp.experts": "num_experts",
        "layer0.mlp.top_k": "num_experts_per_tok", "layer0.mlp.shared_intermediate": "shared_expert_intermediate_size",
        "layer0.attention.q_bias": "qkv_bias"})))


def test_real_config_reads_every_key():
    cfg = CONVERTER.import_config(strategy.QWEN15_MOE_A27B)
    block = cfg.decoder.layer(0)
    assert block.mlp == MoEConfig(experts=60, top_k=4, intermediate=1408, activation="silu", normalize_top_k=False,
                                  shared_intermediate=5632, shared_gate=True)
    a = block.attention
    assert (a.q_bias, a.k_bias, a.v_bias, a.o_bias) == (True, True, True, False)
    assert all(b.attention.window is None for b in cfg.decoder.layers())  # use_sliding_window: false
    assert cfg.metadata["intermediate_size"] == 5632  # inert: no dense layer, kept for the round trip
    out = CONVERTER.export_config(cfg)
    assert out["sliding_window"] == 0 and out["use_sliding_window"] is False  # as transformers stores it
    assert out["max_window_layers"] == 21 and out["mlp_only_layers"] == [] and out["decoder_sparse_step"] == 1


def test_canonical_export_of_a_pattern():
    out = CONVERTER.export_config(config(sparse=(False, True, True), windows=(None, None, None)))
    assert (out["decoder_sparse_step"], out["mlp_only_layers"]) == (1, [0])
    assert out["layer_types"] == ["full_attention"] * 3 and out["use_sliding_window"] is False


def test_on_disk_names():
    names = set(CONVERTER.hf_shapes(config(sparse=(True, False), windows=(None, None))))
    assert {"model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.4.gate_proj.weight",
            "model.layers.0.mlp.experts.4.up_proj.weight", "model.layers.0.mlp.experts.4.down_proj.weight",
            "model.layers.0.mlp.shared_expert.gate_proj.weight", "model.layers.0.mlp.shared_expert_gate.weight",
            "model.layers.1.mlp.gate_proj.weight", "model.layers.0.self_attn.q_proj.bias"} <= names
    assert not any("gate_up_proj" in n or "o_proj.bias" in n for n in names)
