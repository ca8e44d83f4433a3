"""Meta-tests of fixtures/regressions.py and of the saved cases themselves."""
from __future__ import annotations

import json

import pytest

import native
from fixtures.regressions import (REGRESSIONS_DIR, Regression, RegressionError, load_regression,
                                  load_regressions, regression_params, save_regression)


def small_config():
    return native.ModelConfig(hidden_size=8, max_position_embeddings=8,
                              embeddings=native.EmbeddingConfig(vocab_size=17),
                              decoder=native.DecoderConfig.from_layers([native.BlockConfig(
                                  attention=native.AttentionConfig(heads=1, kv_heads=1, head_dim=2),
                                  mlp=native.MLPConfig(intermediate=3))]))


def test_save_and_load_round_trip(tmp_path):
    cfg = small_config()
    path = save_regression("qwen2", "forward_equivalence", native_config=cfg, seed=7,
                           note="k_proj permuted with the q head count", directory=tmp_path)
    assert path.parent == tmp_path and path.name.startswith("qwen2-forward_equivalence-")
    case = load_regression(path)
    assert case == Regression("qwen2", "forward_equivalence", cfg.to_dict(), None, 7,
                              "k_proj permuted with the q head count")
    assert case.config() == cfg and case.id == path.stem
    data = json.loads(path.read_text())
    assert list(data) == ["architecture", "property", "native_config", "hf_config", "seed", "note"]


def test_names_are_content_addressed(tmp_path):
    first = save_regression("llama", "hf_config_roundtrip", hf_config={"model_type": "llama"}, note="a",
                            directory=tmp_path)
    again = save_regression("llama", "hf_config_roundtrip", hf_config={"model_type": "llama"}, note="b",
                            directory=tmp_path)
    other = save_regression("llama", "hf_config_roundtrip", hf_config={"model_type": "llama", "x": 1},
                            directory=tmp_path)
    assert first == again and first != other
    assert load_regression(first).note == "a"  # the existing file (and its note) is kept
    assert load_regression(other).config() == {"model_type": "llama", "x": 1}


def test_loading_filters_and_parametrizes(tmp_path):
    save_regression("llama", "config_roundtrip", native_config=small_config(), directory=tmp_path)
    save_regression("qwen2", "config_roundtrip", native_config=small_config(), directory=tmp_path)
    save_regression("qwen2", "key_bijection", native_config=small_config(), seed=1, directory=tmp_path)
    assert len(load_regressions(tmp_path)) == 3
    assert [c.property for c in load_regressions(tmp_path, architecture="qwen2")] == ["config_roundtrip", "key_bijection"]
    assert len(load_regressions(tmp_path, property="config_roundtrip")) == 2
    params = regression_params(tmp_path, architecture="llama")
    assert len(params) == 1 and params[0].id.startswith("llama-config_roundtrip-")
    assert load_regressions(tmp_path / "missing") == []


@pytest.mark.parametrize("data, message", [
    ({"property": "p", "native_config": {}}, "architecture"),
    ({"architecture": "a", "property": "p"}, "exactly one"),
    ({"architecture": "a", "property": "p", "native_config": {}, "hf_config": {}}, "exactly one"),
    ({"architecture": "a", "property": "p", "hf_config": {}, "seed": -1}, "seed"),
    ({"architecture": "a", "property": "p", "hf_config": {}, "seeds": 1}, "unknown field"),
    ({"architecture": "a", "property": "p", "hf_config": [1]}, "hf_config"),
])
def test_malformed_files_name_the_field(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RegressionError, match=message) as info:
        load_regression(path)
    assert "bad.json" in str(info.value)


def test_saving_refuses_malformed_cases(tmp_path):
    with pytest.raises(RegressionError):
        save_regression("llama", "config_roundtrip", directory=tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_saved_cases_in_the_repository_are_well_formed():
    cases = load_regressions()  # raises on any malformed file
    for case in cases:
        if case.native_config is not None:
            assert isinstance(case.config(), native.ModelConfig)
    assert (REGRESSIONS_DIR / "README.md").is_file()
