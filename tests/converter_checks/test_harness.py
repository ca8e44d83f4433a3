"""Meta-tests of the per-architecture harness (arch_cases.py): each of its checks rejects a
deliberately broken converter (tests/meta/broken.py and the few below), so a green file means the
checks ran with power, not that they could not fail."""
from __future__ import annotations

import pytest
import torch

import native
from arch_cases import (
    assert_class_defaults, assert_hf_roundtrip, assert_weights_roundtrip, forward_check,
    hf_structure, native_structure, save_pretrained_roundtrip, small_norms,
)
from converters.hf_reference import exact_float64
from converters.gemma2 import Gemma2Converter
from converters.llama import LlamaConverter
from converters.mixtral import MixtralConverter
from converters.qwen2_moe import Qwen2MoeConverter
from gemma_cases import block, model
from meta import broken  # tests/meta (tests/ is on sys.path through its conftest)

RMS = native.RMSNormConfig(1e-6)


def llama(*, bias: bool = False) -> native.ModelConfig:
    attention = native.AttentionConfig(heads=4, kv_heads=2, head_dim=8, q_bias=bias, k_bias=bias, v_bias=bias,
                                       o_bias=bias, rotary=native.DefaultRotary(theta=500.0))
    return native.ModelConfig(hidden_size=32, max_position_embeddings=32, embeddings=native.EmbeddingConfig(53),
                              decoder=native.DecoderConfig.from_layers([native.BlockConfig(
                                  norm=RMS, attention=attention, mlp=native.MLPConfig(intermediate=40))] * 2),
                              final_norm=RMS)


def mixtral() -> native.ModelConfig:
    attention = native.AttentionConfig(heads=4, kv_heads=2, head_dim=8, window=5, rotary=native.DefaultRotary(theta=1e3))
    moe = native.MoEConfig(experts=4, top_k=2, intermediate=10)
    return native.ModelConfig(hidden_size=24, max_position_embeddings=64, embeddings=native.EmbeddingConfig(61),
                              decoder=native.DecoderConfig.from_layers([native.BlockConfig(
                                  norm=native.RMSNormConfig(1e-5), attention=attention, mlp=moe)] * 2),
                              final_norm=native.RMSNormConfig(1e-5))


GEMMA2 = model([block(placement="sandwich", window=3, softcap=50.0), block(placement="sandwich", softcap=50.0)],
               final_softcap=30.0)


class AbsentKVHeadsAsOne(LlamaConverter):
    """An absent ``num_key_value_heads`` read as 1 (MQA) instead of LlamaConfig's default, the head count."""

    def import_config(self, hf):
        return super().import_config({"num_key_value_heads": 1, **hf})


class MLPOnlyLayersIgnored(Qwen2MoeConverter):
    """``mlp_only_layers`` ignored on import: those layers come out sparse."""

    def import_config(self, hf):
        return super().import_config({k: v for k, v in hf.items() if k != "mlp_only_layers"})


def test_forward_check_rejects_swapped_k_and_v():
    assert forward_check(LlamaConverter(), llama()).ok
    assert not forward_check(broken.KVSwapped(), llama()).ok


def test_forward_check_on_disk_rejects_reversed_experts():
    assert forward_check(MixtralConverter(), mixtral(), on_disk=True).ok
    assert not forward_check(broken.expert_order_reversed(MixtralConverter)(), mixtral(), on_disk=True).ok


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_forward_check_with_a_measured_baseline_rejects_a_norm_offset(dtype):
    assert forward_check(Gemma2Converter(), GEMMA2, dtype=dtype, exact_hf=exact_float64).ok
    result = forward_check(broken.norm_offset_added(Gemma2Converter)(), GEMMA2, dtype=dtype,
                           exact_hf=exact_float64)
    assert not result.ok, result.describe()


def test_weights_roundtrip_rejects_an_upcast_export():
    assert_weights_roundtrip(LlamaConverter(), llama(), dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="dtype"):
        assert_weights_roundtrip(broken.ExportUpcasts(), llama(), dtype=torch.bfloat16)


def test_weights_roundtrip_from_small_norms_rejects_a_stored_gain():
    assert_weights_roundtrip(Gemma2Converter(), GEMMA2, redraw=small_norms)
    stored = broken.gain_stored(Gemma2Converter)()
    cfg = stored.import_config(Gemma2Converter().export_config(GEMMA2))  # its norms hold the gain
    with pytest.raises(AssertionError, match="HF -> native -> HF"):
        assert_weights_roundtrip(stored, cfg, redraw=small_norms)


def test_hf_roundtrip_rejects_a_dropped_rope_theta():
    hf = LlamaConverter().export_config(llama())
    assert_hf_roundtrip(LlamaConverter(), hf)
    with pytest.raises(AssertionError, match="rope_parameters"):
        assert_hf_roundtrip(broken.RopeThetaDropped(), hf)


def test_class_defaults_reject_a_wrong_default():
    minimal = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 1,
               "intermediate_size": 40,
               "vocab_size": 50}
    fields = {"layer0.attention.kv_heads": "num_key_value_heads"}
    assert_class_defaults(LlamaConverter(), minimal, fields)
    with pytest.raises(AssertionError):
        assert_class_defaults(AbsentKVHeadsAsOne(), minimal, fields)


def test_structure_rejects_ignored_mlp_only_layers():
    hf = {"model_type": "qwen2_moe", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
          "num_hidden_layers": 3, "vocab_size": 31, "intermediate_size": 12, "moe_intermediate_size": 6,
          "shared_expert_intermediate_size": 8, "num_experts": 3, "num_experts_per_tok": 2, "mlp_only_layers": [1]}
    assert native_structure(Qwen2MoeConverter().import_config(hf)) == hf_structure(hf)
    assert native_structure(MLPOnlyLayersIgnored().import_config(hf)) != hf_structure(hf)


def test_save_pretrained_roundtrip_rejects_a_dropped_tensor(tmp_path):
    hf = LlamaConverter().export_config(llama(bias=True))
    save_pretrained_roundtrip(LlamaConverter(), hf, tmp_path / "good")
    with pytest.raises(AssertionError, match="o_proj.bias"):
        save_pretrained_roundtrip(broken.BiasDropped(), hf, tmp_path / "bad")
