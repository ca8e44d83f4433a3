"""Mixtral converter: transformers' default and the real Mixtral-8x7B config round trip; native
weights exported to disk load into MixtralForCausalLM with equal logits (float64); a
``save_pretrained`` checkpoint round trips bit-exact; what Mixtral cannot express is refused."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import moe_cases as mc
import native
from converters import ConversionError
from converters.mixtral import MixtralConverter
from native import (
    AttentionConfig, BlockConfig, DecoderConfig, DefaultRotary, EmbeddingConfig, HeadConfig, MLPConfig,
    ModelConfig, MoEConfig, RMSNormConfig, YarnRotary,
)
from strategies import mixtral as strategy


CONVERTER = MixtralConverter()


def config(*, window=5, tied=False, rotary=DefaultRotary(theta=1000.0), layers=3, experts=4, top_k=2,
           kv_heads=2, head_dim=8) -> ModelConfig:
    attention = AttentionConfig(heads=4, kv_heads=kv_heads, head_dim=head_dim, window=window, rotary=rotary)
    block = BlockConfig(norm=RMSNormConfig(1e-5), attention=attention,
                        mlp=MoEConfig(experts=experts, top_k=top_k, intermediate=10, activation="silu"))
    return ModelConfig(hidden_size=24, max_position_embeddings=64, embeddings=EmbeddingConfig(vocab_size=61),
                       decoder=DecoderConfig(blocks=(block,), pattern=(0,) * layers),
                       final_norm=RMSNormConfig(1e-5), head=HeadConfig(tied=tied))


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    mc.quiet()


# ------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("which", range(3), ids=["transformers-default", "Mixtral-8x7B", "Mixtral-8x7B-small"])
def test_examples_roundtrip(which):
    hf = strategy.hf_examples()[which]
    cfg = mc.assert_hf_roundtrip(CONVERTER, hf)
    assert all(isinstance(b.mlp, MoEConfig) and b.mlp.normalize_top_k for b in cfg.decoder.layers())


def test_real_config_reads_every_key():
    real = strategy.hf_examples()[1]
    cfg = CONVERTER.import_config(real)
    block = cfg.decoder.layer(0)
    assert (block.mlp.experts, block.mlp.top_k, block.mlp.intermediate) == (8, 2, 14336)
    assert block.attention.window is None and block.attention.rotary.theta == 1e6
    assert (block.attention.heads, block.attention.kv_heads, block.attention.head_dim) == (32, 8, 128)
    assert cfg.metadata["router_aux_loss_coef"] == 0.02 and cfg.metadata["output_router_logits"] is False
    out = CONVERTER.export_config(cfg)
    assert out["num_local_experts"] == 8 and "num_experts" not in out and out["head_dim"] is None


def test_absent_keys_take_mixtral_defaults():
    """Absent keys mean MixtralConfig's defaults (not Llama's): 8 KV heads, eps 1e-5, theta 1e6."""
    from transformers import MixtralConfig

    hf = {"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 16, "num_hidden_layers": 2,
          "vocab_size": 50}
    cfg = CONVERTER.import_config(hf)
    reference = MixtralConfig(**{k: v for k, v in hf.items() if k != "model_type"})
    a = cfg.decoder.layer(0).attention
    assert a.kv_heads == reference.num_key_value_heads == 8
    assert cfg.decoder.layer(0).norm.eps == reference.rms_norm_eps
    assert a.rotary.theta == reference.rope_parameters["rope_theta"]
    assert cfg.decoder.layer(0).mlp.experts == reference.num_local_experts
    assert a.head_dim == 4


def test_num_experts_alias():
    hf = CONVERTER.export_config(config())
    alias = {**{k: v for k, v in hf.items() if k != "num_local_experts"}, "num_experts": 4}
    assert CONVERTER.import_config(alias) == CONVERTER.import_config(hf)
    with pytest.raises(ConversionError, match="num_experts"):
        CONVERTER.import_config({**hf, "num_experts": 5})


def test_head_dim_spellings():
    cfg = config(head_dim=6)  # hidden 24 / 4 heads = 6: the default
    assert CONVERTER.export_config(cfg)["head_dim"] is None
    hf = CONVERTER.export_config(cfg)
    explicit = {**hf, "head_dim": 6}
    assert CONVERTER.export_config(CONVERTER.import_config(explicit))["head_dim"] == 6  # kept as written
    assert CONVERTER.export_config(config(head_dim=8))["head_dim"] == 8
    uneven = dataclasses.replace(config(head_dim=6), hidden_size=25)  # 25 // 4 == 6, but 4 does not divide 25
    assert CONVERTER.export_config(uneven)["head_dim"] == 6  # spelled out, not left to transformers' floor
    with pytest.raises(ConversionError, match="head_dim"):
        CONVERTER.import_config({**CONVERTER.export_config(uneven), "head_dim": None})


# ------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("cfg", [
    config(),
    config(window=None, tied=True, kv_heads=1, experts=5, top_k=3),
    config(window=3, layers=2, rotary=YarnRotary(theta=500.0, factor=4.0, original_max_position_embeddings=16)),
], ids=["gqa-window", "mqa-tied-top3", "yarn-window"])
def test_forward_matches_transformers(cfg, tmp_path):
    length = 20  # longer than every window and the YaRN original context
    err = mc.forward_error(CONVERTER, cfg, tmp_path, length=length)
    assert err < mc.FORWARD_TOLERANCE, err


def test_forward_detects_reversed_experts(tmp_path):
    """The comparison has power: experts in reverse order on disk move the logits far past the
    tolerance."""
    cfg = config()
    state = native.random_state(cfg, 0, dtype=torch.float64)
    flipped = {k: v.flip(0) if ".experts." in k else v for k, v in state.items()}
    ids, mask = mc.batch(cfg, 16)
    directory = mc.export_to_disk(CONVERTER, cfg, flipped, tmp_path / "hf")
    err = mc.relative_error(mc.hf_logits_from_disk(directory, ids, mask), mc.native_logits(cfg, state, ids, mask), mask)
    assert err > 1e3 * mc.FORWARD_TOLERANCE


def test_on_disk_names():
    names = set(CONVERTER.hf_shapes(config(layers=1, experts=2)))
    assert {"model.layers.0.block_sparse_moe.gate.weight",
            "model.layers.0.block_sparse_moe.experts.1.w1.weight",
            "model.layers.0.block_sparse_moe.experts.1.w2.weight",
            "model.layers.0.block_sparse_moe.experts.1.w3.weight"} <= names
    assert not any("gate_up_proj" in n or ".mlp." in n for n in names)


def test_save_pretrained_roundtrip(tmp_path):
    small = strategy.hf_examples()[2]
    cfg = mc.save_pretrained_roundtrip(CONVERTER, small, tmp_path)
    assert cfg.num_layers == 2


# ------------------------------------------------------------------------------------ refusals
def _layer(cfg, i, **changes):
    layers = cfg.decoder.layers()
    layers[i] = dataclasses.replace(layers[i], **changes)
    return dataclasses.replace(cfg, decoder=DecoderConfig.from_layers(layers))


@pytest.mark.parametrize("field, make", [
    ("mlp.kind", lambda c: _layer(c, 1, mlp=MLPConfig(intermediate=10))),
    ("normalize_top_k", lambda c: _layer(c, 0, mlp=dataclasses.replace(c.decoder.layer(0).mlp, normalize_top_k=False))),
    ("shared_intermediate", lambda c: _layer(c, 0, mlp=dataclasses.replace(c.decoder.layer(0).mlp, shared_intermediate=4))),
    ("attention.window", lambda c: _layer(c, 2, attention=dataclasses.replace(c.decoder.layer(2).attention, window=7))),
    ("q_bias", lambda c: _layer(c, 0, attention=dataclasses.replace(c.decoder.layer(0).attention, q_bias=True))),
    ("attention.rotary", lambda c: config(head_dim=2, rotary=native.DynamicRotary(factor=2.0))),
])
def test_refuses_what_mixtral_cannot_express(field, make):
    with pytest.raises(ConversionError, match=field.replace(".", r"\.")):
        CONVERTER.export_config(make(config()))


@pytest.mark.parametrize("change, key", [
    ({"num_key_value_heads": None}, "num_key_value_heads"),
    ({"sliding_window": 0}, "window"),
    ({"hidden_act": "swish"}, "hidden_act"),
])
def test_refuses_hf_configs_it_cannot_read(change, key):
    hf = {**CONVERTER.export_config(config()), **change}
    with pytest.raises(ConversionError, match=key):
        CONVERTER.import_config(hf)
