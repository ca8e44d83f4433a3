"""Meta-tests of ``convcheck fuzz`` and ``convcheck replay`` (fixtures/commands.py), in-process.

A converter whose ``import_config`` loses the tie flag stands in for a real bug: fuzz must find it,
save its minimal case, and replay must reproduce it from the file alone.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

converters = pytest.importorskip("converters")
pytest.importorskip("properties")

import native  # noqa: E402
from fixtures import regressions  # noqa: E402
from fixtures.commands import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fuzz_main, replay_main  # noqa: E402


class TieFlagLost:
    """Delegates to a real converter, but imports every config untied."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def import_config(self, hf):
        cfg = self._real.import_config(hf)
        return dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, tied=False))


@pytest.fixture
def broken_llama(monkeypatch):
    real = converters.get("llama")
    broken = TieFlagLost(real)
    original_get = converters.get
    monkeypatch.setattr(converters, "get", lambda name: broken if name == "llama" else original_get(name))
    return broken


def test_fuzz_finds_saves_and_replay_reproduces(broken_llama, regression_dir, capsys):
    code = fuzz_main(["--arch", "llama", "--property", "config_roundtrip", "--examples", "50"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED, out
    assert "config_roundtrip: " in out and "FAILED" in out and "saved as" in out
    (path,) = regression_dir.glob("llama-config_roundtrip-*.json")
    assert (regression_dir.parent / "db").is_dir()  # the nightly database, kept out of the repository
    case = json.loads(path.read_text())
    assert case["native_config"]["head"]["tied"] is True  # the minimal failing config needs a tie
    assert case["note"].startswith("found by convcheck fuzz")

    assert replay_main([str(path)]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "still fails" in captured.err and "tied" in captured.err


def test_replay_of_a_fixed_case_passes(regression_dir, capsys):
    cfg = native.ModelConfig(hidden_size=8, max_position_embeddings=8, embeddings=native.EmbeddingConfig(vocab_size=17),
                             decoder=native.DecoderConfig.from_layers([native.BlockConfig(
                                 attention=native.AttentionConfig(heads=1, kv_heads=1, head_dim=2),
                                 mlp=native.MLPConfig(intermediate=3), norm=native.RMSNormConfig(1e-5))]),
                             final_norm=native.RMSNormConfig(1e-5), head=native.HeadConfig(tied=True))
    path = regressions.save_regression("llama", "config_roundtrip", native_config=cfg, seed=0, directory=regression_dir)
    assert replay_main([str(path)]) == EXIT_OK
    assert "no longer fails" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--arch", "no_such_model"],
    ["--arch", "llama", "--property", "no_such_property"],
    ["--arch", "llama", "--examples", "0"],
])
def test_fuzz_bad_input(argv, capsys):
    assert fuzz_main(argv) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("convcheck: error:")


def test_replay_bad_input(tmp_path, capsys):
    assert replay_main([str(tmp_path / "missing.json")]) == EXIT_BAD_INPUT
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"architecture": "llama", "property": "config_roundtrip"}))
    assert replay_main([str(bad)]) == EXIT_BAD_INPUT
    assert "exactly one" in capsys.readouterr().err


def test_a_clean_fuzz_of_every_property_exits_0(regression_dir, capsys):
    """Properties without hand-written examples (unrepresentable_rejected) have nothing to run in
    the explicit phase: that is not a failure."""
    code = fuzz_main(["--arch", "qwen2", "--examples", "2", "-q"])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "FAILED" not in out and not regression_dir.exists()
