"""The key policy (converters/key_policy.py): keys transformers' config class defines or consumes
are claimed or refused; any other key is carried verbatim, and cannot smuggle a defined key back."""
from __future__ import annotations

import dataclasses
import json

import pytest

import converters
from converters import ConversionError, key_policy
from strategies._hf_common import real_config

STARCODER2 = {"model_type": "starcoder2", "hidden_size": 24, "num_attention_heads": 4, "num_hidden_layers": 2,
              "intermediate_size": 8, "vocab_size": 50, "mlp_type": "default", "activation_function": "gelu"}


@pytest.mark.parametrize("hf,keys", [
    (real_config("HuggingFaceTB__SmolLM2-135M.json"), ("is_llama_config", "rope_interleaved")),
    (real_config("microsoft__Phi-3-mini-4k-instruct.json"), ("auto_map",)),
    (STARCODER2, ("mlp_type", "activation_function")),
], ids=["smollm2", "phi3", "starcoder2"])
def test_keys_the_class_does_not_define_are_carried_verbatim(hf, keys):
    conv = converters.detect(hf)
    cfg = conv.import_config(hf)
    assert sorted(cfg.metadata[key_policy.EXTRA_KEY]) == sorted(keys)
    out = conv.export_config(cfg)
    assert {k: out[k] for k in keys} == {k: hf[k] for k in keys}


def test_rope_type_alias_comes_back():
    conv = converters.get("llama")
    hf = {**real_config("meta-llama__Llama-3.1-8B.json")}
    hf["rope_scaling"] = {**hf["rope_scaling"], "type": "llama3"}
    out = conv.export_config(conv.import_config(hf))
    assert out["rope_parameters"]["type"] == out["rope_parameters"]["rope_type"] == "llama3"
    plain = conv.export_config(conv.import_config(real_config("meta-llama__Llama-3.1-8B.json")))
    assert "type" not in plain["rope_parameters"]


@pytest.mark.parametrize("extra,fragment", [
    ({"hidden_size": 7}, "hidden_size"),            # a declared key
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),  # LlamaConfig reads it
    ({"architectures": ["X"]}, "architectures"),    # a file key
])
def test_carried_keys_cannot_carry_what_transformers_reads(extra, fragment):
    conv = converters.get("llama")
    cfg = conv.import_config(real_config("HuggingFaceTB__SmolLM2-135M.json"))
    cfg = dataclasses.replace(cfg, metadata={**cfg.metadata, key_policy.EXTRA_KEY: extra})
    with pytest.raises(ConversionError, match=fragment):
        conv.export_config(cfg)


def test_unknown_key_inside_a_declared_dict_is_refused():
    hf = real_config("meta-llama__Llama-3.1-8B.json")
    hf["rope_scaling"] = {**hf["rope_scaling"], "mystery": 1}
    with pytest.raises(ConversionError, match="mystery"):
        converters.get("llama").import_config(hf)


def test_defined_keys_come_from_the_installed_class():
    keys = key_policy.defined_keys("llama")
    assert {"hidden_size", "rope_parameters", "id2label"} <= keys
    assert "is_llama_config" not in keys
    assert key_policy.understood_by_transformers("gpt_neox", "rotary_pct", 0.25)  # consumed alias
    assert not key_policy.understood_by_transformers("starcoder2", "mlp_type", "default")


def test_native_to_hf_to_native_keeps_carried_keys_and_the_alias():
    """The native direction: a native config whose metadata carries HF keys (as an import from a
    real file leaves it) exports them and imports back to the same config."""
    conv = converters.get("llama")
    hf = {**real_config("HuggingFaceTB__SmolLM2-135M.json"), "auto_map": {"AutoConfig": "x.Y"},
          "rope_scaling": {"type": "linear", "rope_type": "linear", "factor": 2.0}}
    del hf["rope_parameters"]
    hf["rope_theta"] = 100000
    cfg = conv.import_config(hf)
    assert cfg.metadata[key_policy.EXTRA_KEY]["auto_map"] == {"AutoConfig": "x.Y"}
    assert conv.import_config(json.loads(json.dumps(conv.export_config(cfg)))) == cfg
