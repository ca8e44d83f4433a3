"""Meta-tests of the key policy: a converter that drops a key it should carry is rejected.

- ``UnknownKeysDropped`` forgets the keys transformers' config class does not define
  (``is_llama_config``, ``auto_map``, …) instead of carrying them verbatim;
- ``RopeTypeAliasDropped`` writes ``rope_parameters`` without the v4 ``type`` the source spelled,
  which transformers 5 keeps, so the saved config changes.

``hf_config_roundtrip`` must reject both within the gate's budget (its strategies draw real-file
forms), and the CLI round trip over real configs must report the first one by key.
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import Phase, settings

import converters
from converters import key_policy, registry
from converters.llama import LlamaConverter
from converters.rope import TYPE_ALIAS_KEY
from fixtures import profiles
from properties import PropertyViolation
from fixtures import runner
from strategies._hf_common import real_config


class UnknownKeysDropped(LlamaConverter):
    """Keys the config class does not define are accepted but not carried."""

    def import_config(self, hf):
        cfg = super().import_config(hf)
        metadata = {k: v for k, v in cfg.metadata.items() if k != key_policy.EXTRA_KEY}
        return dataclasses.replace(cfg, metadata=metadata)


class RopeTypeAliasDropped(LlamaConverter):
    """The v4 rope ``type`` alias is not written back."""

    def import_config(self, hf):
        cfg = super().import_config(hf)
        return dataclasses.replace(cfg, metadata={k: v for k, v in cfg.metadata.items() if k != TYPE_ALIAS_KEY})


def gate_settings(prop: str) -> settings:
    return settings(profiles.settings_for(prop, "gate"), phases=(Phase.explicit, Phase.reuse, Phase.generate))


@pytest.mark.parametrize("broken", [UnknownKeysDropped, RopeTypeAliasDropped])
def test_hf_config_roundtrip_rejects_a_dropped_key(broken):
    with pytest.raises(PropertyViolation) as info:
        runner.hypothesis_test("hf_config_roundtrip", broken(), settings=gate_settings("hf_config_roundtrip"),
                               examples=False)()
    assert info.value.property == "hf_config_roundtrip"


def test_real_smollm2_config_catches_it_without_strategies():
    """The explicit example alone (SmolLM2's ``is_llama_config``) is enough."""
    hf = real_config("HuggingFaceTB__SmolLM2-135M.json")
    from properties.config import hf_config_roundtrip

    hf_config_roundtrip(converters.get("llama"), hf)
    with pytest.raises(PropertyViolation, match="is_llama_config"):
        hf_config_roundtrip(UnknownKeysDropped(), hf)


def test_cli_round_trip_rejects_a_dropped_key(tmp_path, monkeypatch):
    rc = _real_configs_test_module()

    monkeypatch.setitem(registry._REGISTRY, "llama", UnknownKeysDropped())
    hf = real_config("HuggingFaceTB__SmolLM2-135M.json")
    with pytest.raises(AssertionError, match="is_llama_config"):
        rc.test_cli_round_trip("SmolLM2-135M", hf, "float32", tmp_path)


def _real_configs_test_module():
    """tests/converter_checks/test_real_configs.py, loaded from its file (it is no package module)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "converter_checks" / "test_real_configs.py"
    spec = importlib.util.spec_from_file_location("real_configs_round_trip", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
