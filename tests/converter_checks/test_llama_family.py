"""Per-architecture examples for llama, mistral, qwen2, qwen3: transformers' default configs, the
real public configs, and tiny random HF models converted HF→native→HF and compared with the native
forward pass. (The property suite generalises these over random configs.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import converters
import native
from arch_cases import assert_hf_roundtrip, import_refusal, refusal
from fixtures.tolerances import HAND_WRITTEN_FLOAT64
from strategies.paths import REAL_CONFIGS

FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def real_configs(model_type: str) -> list[Path]:
    return [p for p in sorted(REAL_CONFIGS.glob("*.json")) if json.loads(p.read_text())["model_type"] == model_type]


@pytest.mark.parametrize("model_type", FAMILY)
def test_transformers_default_config_round_trips(model_type):
    assert_hf_roundtrip(converters.get(model_type), AutoConfig.for_model(model_type).to_dict())


@pytest.mark.parametrize("path", [p for t in FAMILY for p in real_configs(t)], ids=lambda p: p.stem)
def test_real_config_round_trips(path):
    hf = json.loads(path.read_text())
    conv = converters.detect(hf)
    exported = conv.export_config(assert_hf_roundtrip(conv, hf))
    assert "rope_parameters" in exported and "rope_theta" not in exported and "rope_scaling" not in exported
    for key in ("bos_token_id", "eos_token_id", "initializer_range", "use_cache"):
        assert exported[key] == hf[key], key


def test_llama31_rope_is_llama3_with_its_parameters():
    hf = json.loads((REAL_CONFIGS / "meta-llama__Llama-3.1-8B.json").read_text())
    rotary = converters.get("llama").import_config(hf).decoder.blocks[0].attention.rotary
    assert isinstance(rotary, native.Llama3Rotary)
    assert (rotary.theta, rotary.factor, rotary.original_max_position_embeddings) == (500000.0, 8.0, 8192)


TINY = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
            num_key_value_heads=2, vocab_size=37, max_position_embeddings=64)
VARIANTS = {
    "llama": dict(attention_bias=True, mlp_bias=True, rope_scaling={"rope_type": "llama3", "factor": 4.0,
                  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "mistral": dict(sliding_window=5, tie_word_embeddings=True),
    "qwen2": dict(use_sliding_window=True, sliding_window=6, max_window_layers=1),
    "qwen3": dict(head_dim=10, attention_bias=True, rope_theta=5000.0),
}


def random_hf_model(model_type: str):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **VARIANTS[model_type])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float64, attn_implementation="sdpa").eval()  # eager NaNs a fully padded window
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0 if p.dim() == 1 else 0.0, 0.2)  # biases and norms away from 0 and 1 too
    return model


@pytest.mark.parametrize("model_type", FAMILY)
def test_tiny_hf_model_round_trips_and_matches_native_logits(model_type, tmp_path):
    model = random_hf_model(model_type)
    model.save_pretrained(tmp_path / "hf")
    conv = converters.get(model_type)
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg = conv.import_config(hf_config)
    from checkpoints.hf_reader import open_hf_checkpoint

    with open_hf_checkpoint(tmp_path / "hf") as reader:
        on_disk = {k: reader[k].clone() for k in reader}
    state = dict(conv.import_weights(cfg, on_disk))
    back = dict(conv.export_weights(cfg, state))
    assert back.keys() == on_disk.keys()
    for name in on_disk:
        assert torch.equal(back[name], on_disk[name]), name

    ours = native.NativeModel(cfg).double().eval()
    ours.load_state_dict(state)
    ids = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        actual = ours(ids, mask)
    for row, length in ((0, 20), (1, 15)):
        err = (actual[row, :length] - expected[row, :length]).norm() / expected[row, :length].norm()
        assert err < HAND_WRITTEN_FLOAT64, (model_type, row, float(err))


def test_qwen2_refuses_an_o_bias():
    cfg = converters.get("qwen2").import_config(AutoConfig.for_model("qwen2", **TINY).to_dict())
    broken = native.replace_path(cfg, "decoder.blocks[0].attention.o_bias", True)
    refusal(converters.get("qwen2"), broken, "o_bias")


def test_key_llama_config_does_not_define_is_carried_verbatim():
    hf = AutoConfig.for_model("llama", **TINY).to_dict()
    hf["use_flux_capacitor"] = {"gigawatts": 1.21}
    conv = converters.get("llama")
    assert conv.export_config(conv.import_config(hf))["use_flux_capacitor"] == {"gigawatts": 1.21}


def test_key_llama_config_reads_but_no_declaration_claims_is_refused():
    hf = AutoConfig.for_model("llama", **TINY).to_dict()
    hf["partial_rotary_factor"] = 0.5  # LlamaConfig folds it into rope_parameters
    import_refusal(converters.get("llama"), hf, "partial_rotary_factor")


def test_contradictory_rope_theta_is_refused():
    hf = AutoConfig.for_model("llama", **TINY).to_dict()
    hf["rope_theta"] = 123.0
    import_refusal(converters.get("llama"), hf, "rope_theta")


def test_missing_required_key_is_refused():
    hf = AutoConfig.for_model("llama", **TINY).to_dict()
    del hf["hidden_size"]
    import_refusal(converters.get("llama"), hf, "hidden_size")


def test_per_layer_heads_are_refused_with_the_layer_named():
    cfg = converters.get("llama").import_config(AutoConfig.for_model("llama", **TINY).to_dict())
    layers = cfg.decoder.layers()
    layers[1] = native.replace_path(layers[1], "attention.kv_heads", 3)
    cfg = native.replace_path(cfg, "decoder", native.DecoderConfig.from_layers(layers))
    refusal(converters.get("llama"), cfg, "kv_heads")


@pytest.mark.parametrize("heads", [0, -2, None, "8"])
def test_nonpositive_head_count_is_refused_not_crashed(heads):
    hf = AutoConfig.for_model("llama", **TINY).to_dict()
    hf["num_attention_heads"] = heads
    del hf["head_dim"]
    import_refusal(converters.get("llama"), hf, "num_attention_heads")
