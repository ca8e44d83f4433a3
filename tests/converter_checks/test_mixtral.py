"""Mixtral converter: transformers' default and the real Mixtral-8x7B config round trip; native
weights exported to disk load into MixtralForCausalLM with equal logits (float64); a
``save_pretrained`` checkpoint round trips bit-exact; what Mixtral cannot express is refused."""
from __future__ import annotations

import dataclasses

import torch

import native
from arch_cases import (
    forward_length, hf_logits, import_refusal, native_logits, padded_batch, standard_tests, with_attention, with_layer,
    with_mlp,
)
from converters.mixtral import MixtralConverter
from fixtures.tolerances import HAND_WRITTEN_FLOAT64, relative_error
from native import (
    AttentionConfig, BlockConfig, DecoderConfig, DefaultRotary, EmbeddingConfig, HeadConfig, MLPConfig,
    ModelConfig, MoEConfig, RMSNormConfig, YarnRotary,
)
from strategies import _hf_common as hc
from strategies import mixtral as strategy

CONVERTER = MixtralConverter()
EXAMPLES = strategy.hf_examples()


def config(*, window=5, tied=False, rotary=DefaultRotary(theta=1000.0), layers=3, experts=4, top_k=2,
           kv_heads=2, head_dim=8) -> ModelConfig:
    attention = AttentionConfig(heads=4, kv_heads=kv_heads, head_dim=head_dim, window=window, rotary=rotary)
    block = BlockConfig(norm=RMSNormConfig(1e-5), attention=attention,
                        mlp=MoEConfig(experts=experts, top_k=top_k, intermediate=10, activation="silu"))
    return ModelConfig(hidden_size=24, max_position_embeddings=64, embeddings=EmbeddingConfig(vocab_size=61),
                       decoder=DecoderConfig(blocks=(block,), pattern=(0,) * layers),
                       final_norm=RMSNormConfig(1e-5), head=HeadConfig(tied=tied))


FORWARD_CASES = {
    "gqa-window": config(),
    "mqa-tied-top3": config(window=None, tied=True, kv_heads=1, experts=5, top_k=3),
    "yarn-window": config(window=3, layers=2, rotary=YarnRotary(theta=500.0, factor=4.0, original_max_position_embeddings=16)),
}
BASE = FORWARD_CASES["gqa-window"]
REFUSALS = [
    ("mlp.kind", with_layer(BASE, 1, mlp=MLPConfig(intermediate=10))),
    ("normalize_top_k", with_mlp(BASE, 0, normalize_top_k=False)),
    ("shared_intermediate", with_mlp(BASE, 0, shared_intermediate=4)),
    ("attention.window", with_attention(BASE, 2, window=7)),
    ("q_bias", with_attention(BASE, 0, q_bias=True)),
    ("attention.rotary", config(head_dim=2, rotary=native.DynamicRotary(factor=2.0))),
]
HF_REFUSALS = [(key, {**CONVERTER.export_config(BASE), **change}) for key, change in [
    ("num_key_value_heads", {"num_key_value_heads": None}),
    ("window", {"sliding_window": 0}),
    ("hidden_act", {"hidden_act": "swish"}),
]]


#: absent keys take MixtralConfig's defaults, not Llama's (8 KV heads, eps 1e-5, theta 1e6)
MINIMAL = {"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 16, "num_hidden_layers": 2, "vocab_size": 50}
CLASS_DEFAULTS = (MINIMAL, {
    "layer0.attention.kv_heads": "num_key_value_heads", "layer0.norm.eps": "rms_norm_eps",
    "layer0.attention.rotary.theta": "rope_parameters.rope_theta", "layer0.mlp.experts": "num_local_experts"})


def check_example(cfg: native.ModelConfig) -> None:
    assert all(isinstance(b.mlp, MoEConfig) and b.mlp.normalize_top_k for b in cfg.decoder.layers())


globals().update(standard_tests(
    CONVERTER, FORWARD_CASES, hf_examples=EXAMPLES, check_example=check_example,
    example_ids=hc.example_ids(EXAMPLES, ("transformers-default", "Mixtral-8x7B", "Mixtral-8x7B-small")),
    refusals=REFUSALS, hf_refusals=HF_REFUSALS, on_disk=True, saved=EXAMPLES[2], class_defaults=CLASS_DEFAULTS))


def test_real_config_reads_every_key():
    cfg = CONVERTER.import_config(EXAMPLES[1])
    block = cfg.decoder.layer(0)
    assert (block.mlp.experts, block.mlp.top_k, block.mlp.intermediate) == (8, 2, 14336)
    assert block.attention.window is None and block.attention.rotary.theta == 1e6
    assert (block.attention.heads, block.attention.kv_heads, block.attention.head_dim) == (32, 8, 128)
    assert cfg.metadata["router_aux_loss_coef"] == 0.02 and cfg.metadata["output_router_logits"] is False
    out = CONVERTER.export_config(cfg)
    assert out["num_local_experts"] == 8 and "num_experts" not in out and out["head_dim"] is None


def test_num_experts_alias():
    hf = CONVERTER.export_config(BASE)
    alias = {**{k: v for k, v in hf.items() if k != "num_local_experts"}, "num_experts": 4}
    assert CONVERTER.import_config(alias) == CONVERTER.import_config(hf)
    import_refusal(CONVERTER, {**hf, "num_experts": 5}, "num_experts")


def test_head_dim_spellings():
    assert CONVERTER.import_config(MINIMAL).decoder.layer(0).attention.head_dim == 4  # absent: hidden / heads
    cfg = config(head_dim=6)  # hidden 24 / 4 heads = 6: the default
    assert CONVERTER.export_config(cfg)["head_dim"] is None
    hf = CONVERTER.export_config(cfg)
    explicit = {**hf, "head_dim": 6}
    assert CONVERTER.export_config(CONVERTER.import_config(explicit))["head_dim"] == 6  # kept as written
    assert CONVERTER.export_config(config(head_dim=8))["head_dim"] == 8
    uneven = dataclasses.replace(config(head_dim=6), hidden_size=25)  # 25 // 4 == 6, but 4 does not divide 25
    assert CONVERTER.export_config(uneven)["head_dim"] == 6  # spelled out, not left to transformers' floor
    import_refusal(CONVERTER, {**CONVERTER.export_config(uneven), "head_dim": None}, "head_dim")


def test_forward_detects_reversed_experts():
    """The comparison has power: experts in reverse order on disk move the logits far past the
    hand-written bound."""
    state = native.random_state(BASE, 0, dtype=torch.float64)
    flipped = {k: v.flip(0) if ".experts." in k else v for k, v in state.items()}
    ids, mask = padded_batch(BASE, forward_length(BASE), 0)
    theirs = hf_logits(CONVERTER, BASE, flipped, ids, mask, on_disk=True)
    assert relative_error(native_logits(BASE, state, ids, mask), theirs, mask.bool()) > 1e3 * HAND_WRITTEN_FLOAT64


def test_on_disk_names():
    names = set(CONVERTER.hf_shapes(config(layers=1, experts=2)))
    assert {"model.layers.0.block_sparse_moe.gate.weight",
            "model.layers.0.block_sparse_moe.experts.1.w1.weight",
            "model.layers.0.block_sparse_moe.experts.1.w2.weight",
            "model.layers.0.block_sparse_moe.experts.1.w3.weight"} <= names
    assert not any("gate_up_proj" in n or ".mlp." in n for n in names)
