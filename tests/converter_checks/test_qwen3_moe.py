"""Qwen3-MoE converter: transformers' default and Qwen3-30B-A3B round trip; the dense/sparse layer
rule agrees with the model transformers builds; native weights exported to disk load into
Qwen3MoeForCausalLM with equal logits (float64); a ``save_pretrained`` checkpoint round trips
bit-exact; what Qwen3-MoE cannot express is refused."""
from __future__ import annotations

import dataclasses

from arch_cases import standard_tests, with_attention, with_layer
from converters.qwen3_moe import Qwen3MoeConverter
from native import (
    AttentionConfig, BlockConfig, DecoderConfig, DefaultRotary, EmbeddingConfig, HeadConfig, LinearRotary,
    MLPConfig, ModelConfig, MoEConfig, RMSNormConfig,
)
from strategies import _hf_common as hc
from strategies import qwen3_moe as strategy

CONVERTER = Qwen3MoeConverter()
EXAMPLES = strategy.hf_examples()
MOE = MoEConfig(experts=5, top_k=3, intermediate=10, normalize_top_k=True)
DENSE = MLPConfig(intermediate=18)
EPS = 1e-6


def config(*, sparse=(True, False, True), window=4, bias=False, tied=False, moe=MOE, head_dim=10,
           rotary=DefaultRotary(theta=1000.0)) -> ModelConfig:
    attention = AttentionConfig(heads=4, kv_heads=2, head_dim=head_dim, q_bias=bias, k_bias=bias, v_bias=bias,
                                o_bias=bias, qk_norm=RMSNormConfig(EPS), window=window, rotary=rotary)
    layers = [BlockConfig(norm=RMSNormConfig(EPS), attention=attention, mlp=moe if s else DENSE) for s in sparse]
    return ModelConfig(hidden_size=24, max_position_embeddings=64, embeddings=EmbeddingConfig(vocab_size=61),
                       decoder=DecoderConfig.from_layers(layers), final_norm=RMSNormConfig(EPS),
                       head=HeadConfig(tied=tied))


def small(**changes) -> dict:
    base = {"model_type": "qwen3_moe", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 4, "vocab_size": 31, "intermediate_size": 12, "moe_intermediate_size": 6,
            "num_experts": 3, "num_experts_per_tok": 2}
    return {**base, **changes}


FORWARD_CASES = {
    "mixed-window-qknorm": config(),
    "biases-tied-no-renorm": config(sparse=(False, True), window=None, bias=True, tied=True,
                                    moe=dataclasses.replace(MOE, normalize_top_k=False)),
    "all-sparse-linear-default-head-dim": config(sparse=(True, True, True), window=3, head_dim=6,
                                                 rotary=LinearRotary(theta=100.0, factor=2.0)),
}
BASE = FORWARD_CASES["mixed-window-qknorm"]
STRUCTURES = {name: small(**changes) for name, changes in {
    "step2-mlp-only": {"decoder_sparse_step": 2, "mlp_only_layers": [1]},
    "all-dense": {"mlp_only_layers": [0, 1, 2, 3]},
    "no-experts": {"num_experts": 0},
    "window": {"use_sliding_window": True, "sliding_window": 3},
    "window-disabled": {"use_sliding_window": False, "sliding_window": 3},
    "window-null": {"use_sliding_window": True, "sliding_window": None},
}.items()}
REFUSALS = [
    ("shared_intermediate", config(moe=dataclasses.replace(MOE, shared_intermediate=8))),
    ("attention.window", with_attention(BASE, 1, window=None)),
    ("qk_norm", with_attention(BASE, 0, qk_norm=None)),
    ("qk_norm_scope", with_attention(BASE, 0, qk_norm_scope="full")),
    ("o_bias", with_attention(BASE, 0, o_bias=True)),
    ("top_k", with_layer(BASE, 0, mlp=dataclasses.replace(MOE, top_k=1))),
    ("bias", with_layer(BASE, 1, mlp=dataclasses.replace(DENSE, bias=True))),
]
HF_REFUSALS = [(key, small(**change)) for key, change in [
    ("num_experts", {"num_local_experts": 4}),  # both spellings, different values
    ("layer_types", {"layer_types": ["full_attention"] * 4}),
    ("sliding_window", {"sliding_window": 0, "use_sliding_window": True}),
    ("head_dim", {"head_dim": None}),
    ("mlp_only_layers", {"mlp_only_layers": [True]}),
]]

globals().update(standard_tests(
    CONVERTER, FORWARD_CASES, hf_examples=EXAMPLES,
    example_ids=hc.example_ids(EXAMPLES, ("transformers-default", "Qwen3-30B-A3B", "30B-A3B-small")),
    refusals=REFUSALS, hf_refusals=HF_REFUSALS, on_disk=True, structures=STRUCTURES,
    saved=small(decoder_sparse_step=2, mlp_only_layers=[1], use_sliding_window=True, sliding_window=3, head_dim=6,
                attention_bias=True),
    class_defaults=(small(), {
        "layer0.attention.kv_heads": "num_key_value_heads", "layer0.mlp.experts": "num_experts",
        "layer0.mlp.normalize_top_k": "norm_topk_prob"})))


def test_real_config_reads_every_key():
    cfg = CONVERTER.import_config(strategy.QWEN3_30B_A3B)
    block = cfg.decoder.layer(0)
    assert block.mlp == MoEConfig(experts=128, top_k=8, intermediate=768, activation="silu", normalize_top_k=True)
    assert block.attention.head_dim == 128 and block.attention.qk_norm == RMSNormConfig(1e-6)
    assert block.attention.window is None and block.attention.rotary.theta == 1e6
    assert cfg.metadata["max_window_layers"] == 48
    out = CONVERTER.export_config(cfg)
    assert out["num_local_experts"] == 128 and "num_experts" not in out  # transformers saves the alias target
    assert out["head_dim"] == 128


def test_head_dim_absent_means_hidden_over_heads():
    cfg = CONVERTER.import_config(small())
    assert cfg.decoder.layer(0).attention.head_dim == 4  # not Qwen3's 128: Qwen3MoeConfig has no head_dim field
    assert "head_dim" not in CONVERTER.export_config(cfg)
    assert CONVERTER.export_config(CONVERTER.import_config(small(head_dim=4)))["head_dim"] == 4


def test_on_disk_names():
    names = set(CONVERTER.hf_shapes(config(sparse=(True, False))))
    assert {"model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.4.gate_proj.weight",
            "model.layers.0.mlp.experts.4.up_proj.weight", "model.layers.0.mlp.experts.4.down_proj.weight",
            "model.layers.1.mlp.gate_proj.weight", "model.layers.0.self_attn.q_norm.weight"} <= names
    assert not any("gate_up_proj" in n or "shared_expert" in n for n in names)
