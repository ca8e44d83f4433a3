"""``convcheck gate --adapter``, ``convcheck fuzz --adapter``, ``convcheck replay`` of an adapter case,
and ``pytest --convcheck-adapter`` from another project's directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import converters
from fixtures import regressions
from fixtures.commands import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fuzz_main, replay_main
from fixtures.gate import main as gate_main



class TieFlagLost(type(converters.get("llama"))):
    """Our Llama converter, exporting every config untied: a tied model comes back untied."""

    def export_config(self, cfg):
        return {**super().export_config(cfg), "tie_word_embeddings": False}


@pytest.fixture
def broken_module(monkeypatch):
    module = types.ModuleType("convcheck_broken_adapters")
    module.TieFlagLost = TieFlagLost
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return f"{module.__name__}:TieFlagLost"


def test_fuzz_an_adapter_saves_a_case_that_replays(broken_module, regression_dir, capsys):
    code = fuzz_main(["--adapter", broken_module, "--arch", "llama", "--property", "hf_config_roundtrip",
                      "--examples", "30", "-q"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED, out
    assert "via adapter" in out and "saved as" in out, out  # the whole report, should it ever fail
    (path,) = regression_dir.glob("convcheck_broken_adapters_TieFlagLost-llama-hf_config_roundtrip-*.json")
    case = json.loads(path.read_text())
    assert case["adapter"] == broken_module and case["hf_config"]["model_type"] == "llama"
    assert regressions.load_regressions(regression_dir) == []  # not one of our own converters' cases
    assert replay_main([str(path)]) == EXIT_FAILED
    assert "tie_word_embeddings" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--adapter", "no_such_module:Adapter", "--arch", "llama"],
    ["--adapter", "native", "--arch", "no_such_model"],
    ["--adapter", "native", "--arch", "llama", "--property", "config_roundtrip"],  # a native-side property
])
def test_fuzz_adapter_bad_input(argv, capsys):
    assert fuzz_main(argv) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("convcheck: error:")


def test_gate_adapter_matrix(tmp_path, capsys):
    code = gate_main(["--adapter", "native", "--arch", "qwen2", "--profile", "dev", "-n", "0",
                      "--junit", str(tmp_path / "junit.xml"), "--summary", str(tmp_path / "summary.md")])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    for law in ("hf_config_roundtrip", "weight_roundtrip", "tied_embeddings", "forward_equivalence"):
        assert law in out
    assert "qwen2" in out and "FAIL" not in out


def test_gate_adapter_bad_name(capsys):
    assert gate_main(["--adapter", "nonexistent_framework"]) == 2
    assert "nonexistent_framework" in capsys.readouterr().err


def test_one_option_in_another_projects_ci(tmp_path):
    """A framework's repository: its adapter module (the README's), no conftest, one pytest option."""
    (tmp_path / "my_adapter.py").write_text(_readme_code())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--convcheck-adapter", "my_adapter:MetaLlamaAdapter",
                           "--convcheck-profile", "dev", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout, proc.stdout[-2000:]


def _readme_code() -> str:
    import re

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return re.search(r"<!-- adapter-example -->\n```python\n(.*?)```", text, re.S).group(1)
