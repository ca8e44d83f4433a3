"""`convcheck convert` end to end on a tiny model, both directions, and its bad-input exits."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

import checkpoints
from checkpoints.cli import main

TINY = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, vocab_size=37, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("cli") / "hf"
    model.save_pretrained(path, max_shard_size="20KB")
    (path / "tokenizer.json").write_text('{"model": "tiny"}')
    return path


def hf_tensors(path):
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_round_trip_is_bit_exact_and_deterministic(hf_dir, tmp_path, capsys):
    assert main(["convert", str(hf_dir), str(tmp_path / "native"), "-q"]) == 0
    assert "converted qwen2 hf -> native" in capsys.readouterr().out
    assert checkpoints.load_model(tmp_path / "native") is not None
    for name in ("a", "b"):
        assert main(["convert", str(tmp_path / "native"), str(tmp_path / name), "-q", "--max-shard-size", "20KB"]) == 0
    original, back = hf_tensors(hf_dir), hf_tensors(tmp_path / "a")
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == '{"model": "tiny"}'
    assert (tmp_path / "a" / "generation_config.json").exists()
    for file in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_dtype_cast_sets_config_dtype(hf_dir, tmp_path):
    assert main(["convert", str(hf_dir), str(tmp_path / "native"), "-q"]) == 0
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "hf"), "-q", "--dtype", "bf16"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in hf_tensors(tmp_path / "hf").values()} == {torch.bfloat16}


@pytest.mark.parametrize("case", ["missing", "exists", "inside", "same_format", "unknown_type", "no_config_key"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, hf_dir, tmp_path, capsys):
    src, dst, extra = hf_dir, tmp_path / "out", []
    if case == "missing":
        src = tmp_path / "nope"
    elif case == "exists":
        dst.mkdir()
    elif case == "inside":
        dst = hf_dir / "inside"
    elif case == "same_format":
        extra = ["--to", "hf"]
    else:
        src = tmp_path / "bad"
        src.mkdir()
        config = json.loads((hf_dir / "config.json").read_text())
        if case == "unknown_type":
            config["model_type"] = "not_a_model"
        else:
            del config["num_attention_heads"]
        (src / "config.json").write_text(json.dumps(config))
        for file in hf_dir.glob("model*"):
            (src / file.name).write_bytes(file.read_bytes())
    existed = dst.exists()
    assert main(["convert", str(src), str(dst), "-q", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convcheck: error:") and "\n" not in err and "Traceback" not in err
    assert dst.exists() == existed
    if existed:
        assert list(dst.iterdir()) == []


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "checkpoints.cli", "convert", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--max-shard-size" in result.stdout
