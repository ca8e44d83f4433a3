"""Hostile and broken input to ``convcheck convert``: each case exits 2 with one line naming the file or
key, writes nothing, and leaves a previous output (``--overwrite``) untouched."""
from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest
import torch

from checkpoints.cli import main
from checkpoints.pipeline import convert

import convert_cases
from convert_cases import hf_tensors, llama_config, write_hf


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A sharded HF checkpoint, its native conversion (3 stages), and a previous output."""
    root = tmp_path_factory.mktemp("hostile")
    cfg = llama_config(layers=3)
    write_hf(root / "hf", cfg, hf_tensors(cfg), shard=20_000)
    convert(root / "hf", root / "native", pipeline_stages=3)
    return root


@pytest.fixture
def work(good, tmp_path):
    """Private copies of the good checkpoints, and a previous output at ``out`` (a checkpoint, so
    that ``--overwrite`` may replace it)."""
    for name in ("hf", "native"):
        shutil.copytree(good / name, tmp_path / name)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "out" / "previous.txt").write_text("previous output")
    return tmp_path


def refused(work: Path, src: Path, capsys, *fragments, dst: Path | None = None, extra=()) -> str:
    """Exit 2, one line, the fragments in it, nothing written (with or without --overwrite)."""
    dst = dst or work / "out"
    for args in ([], ["--overwrite"]):
        if not args and dst.exists():
            continue  # without --overwrite the existing output is refused for that reason alone
        err = convert_cases.refused(src, dst, capsys, *fragments, extra=(*args, *extra))
    if not dst.exists():
        assert main(["convert", str(src), str(dst), "-q", *extra]) == 2 and not dst.exists()
        capsys.readouterr()
    return err


def shards(root: Path) -> list[Path]:
    return sorted(root.glob("model-*.safetensors"))


def index(root: Path) -> dict:
    return json.loads((root / "model.safetensors.index.json").read_text())


def write_index(root: Path, data: dict) -> None:
    (root / "model.safetensors.index.json").write_text(json.dumps(data))


# ----------------------------------------------------------------------------- safetensors files
@pytest.mark.parametrize("seed", range(4))
def test_truncated_shard_at_a_random_offset(work, capsys, seed):
    shard = shards(work / "hf")[seed % 3]
    data = shard.read_bytes()
    cut = random.Random(seed).randrange(0, len(data) - 1)
    shard.write_bytes(data[:cut])
    refused(work, work / "hf", capsys, shard.name)


@pytest.mark.parametrize("how", ["json", "length"])
def test_corrupt_header(work, capsys, how):
    shard = shards(work / "hf")[1]
    data = bytearray(shard.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    if how == "json":
        data[8:8 + length] = b"{" + b"x" * (length - 1)
    else:
        data[:8] = struct.pack("<Q", 2**40)
    shard.write_bytes(bytes(data))
    refused(work, work / "hf", capsys, shard.name, "safetensors")


# ----------------------------------------------------------------------------------- the index
def test_index_names_a_missing_shard(work, capsys):
    shard = shards(work / "hf")[2]
    shard.unlink()
    refused(work, work / "hf", capsys, "model.safetensors.index.json", shard.name, "missing")


def test_tensor_missing_from_its_named_shard(work, capsys):
    data = index(work / "hf")
    name = "model.layers.2.mlp.down_proj.weight"
    data["weight_map"]["model.layers.9.extra.weight"] = data["weight_map"][name]
    write_index(work / "hf", data)
    refused(work, work / "hf", capsys, "model.layers.9.extra.weight", data["weight_map"][name])


def test_tensor_listed_in_two_shards(work, capsys):
    from safetensors.torch import load_file, save_file
    files = shards(work / "hf")
    first, last = load_file(files[0]), load_file(files[-1])
    name = next(iter(first))
    last[name] = first[name]
    save_file(last, files[-1], metadata={"format": "pt"})
    refused(work, work / "hf", capsys, repr(name), files[0].name, files[-1].name)


# ----------------------------------------------------------------------------------- the config
def edit_config(root: Path, **changes) -> None:
    config = json.loads((root / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (root / "config.json").write_text(json.dumps(config))


def test_shape_disagreeing_with_the_config(work, capsys):
    edit_config(work / "hf", intermediate_size=40)
    file = index(work / "hf")["weight_map"]["model.layers.0.mlp.down_proj.weight"]
    refused(work, work / "hf", capsys, f"{file}: model.layers.0.mlp.down_proj.weight: shape (32, 48), expected (32, 40)")


def test_unknown_model_type(work, capsys):
    edit_config(work / "hf", model_type="not_a_model")
    refused(work, work / "hf", capsys, "'not_a_model'")


@pytest.mark.parametrize("key", ["num_attention_heads", "hidden_size", "num_hidden_layers", "vocab_size"])
def test_config_missing_a_required_key(work, capsys, key):
    edit_config(work / "hf", **{key: None})
    refused(work, work / "hf", capsys, key)


@pytest.mark.parametrize("changes,fragment", [
    (dict(hidden_size=30, head_dim=None), "hidden_size=30 is not divisible by num_attention_heads=4"),
    (dict(num_key_value_heads=3), "num_key_value_heads=3 does not divide num_attention_heads=4"),
    (dict(num_attention_heads=0), "num_attention_heads=0 must be a positive integer"),
    (dict(hidden_size="32"), "hidden_size='32' must be a positive integer"),
])
def test_contradictory_config(work, capsys, changes, fragment):
    edit_config(work / "hf", **changes)
    refused(work, work / "hf", capsys, "config.json", fragment)


def test_config_not_json(work, capsys):
    (work / "hf" / "config.json").write_text('{"model_type": "llama", ')
    refused(work, work / "hf", capsys, "config.json")


# ------------------------------------------------------------------------------- DCP stages
def test_dcp_missing_stage(work, capsys):
    shutil.rmtree(work / "native" / "pp1")
    refused(work, work / "native", capsys, "pp1", "missing")


def test_dcp_overlapping_stages(work, capsys):
    (work / "native" / "pp1" / "stage.json").write_text(json.dumps({"stage": 1, "num_stages": 3, "layers": [0, 2]}))
    refused(work, work / "native", capsys, "layer 0", "pp0", "pp1")


def test_dcp_truncated_data_file(work, capsys):
    data = max((work / "native" / "pp2").glob("*.distcp"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    refused(work, work / "native", capsys, data.name, "truncated")


# -------------------------------------------------------------------------------------- paths
def test_output_inside_the_input(work, capsys):
    refused(work, work / "hf", capsys, "must not be inside the input", dst=work / "hf" / "converted")


def test_output_containing_the_input_is_never_replaced(work, capsys):
    nested = work / "parent" / "hf"
    shutil.copytree(work / "hf", nested)
    refused(work, nested, capsys, "must not contain the input", dst=work / "parent")
    assert (nested / "config.json").is_file()


def test_output_that_is_the_input(work, capsys):
    refused(work, work / "hf", capsys, "must not be inside the input", dst=work / "hf")


# ---------------------------------------------------------------------------------- nonfinite
@pytest.mark.parametrize("seed", range(2))
def test_nonfinite_weights_at_random_places(work, capsys, seed):
    from safetensors.torch import load_file, save_file
    rng = random.Random(seed)
    poisoned: dict[str, tuple[int, int]] = {}
    for shard in shards(work / "hf"):
        tensors = load_file(shard)
        for name in rng.sample(sorted(tensors), 1):
            t = tensors[name].clone()
            k = rng.randrange(t.numel())
            nan = rng.random() < 0.5
            t.view(-1)[k] = float("nan") if nan else float("inf")
            tensors[name] = t
            poisoned[name] = (int(nan), int(not nan))
        save_file(tensors, shard, metadata={"format": "pt"})
    err = refused(work, work / "hf", capsys, f"nonfinite weights in {len(poisoned)} tensor(s)")
    for name, (nan, inf) in poisoned.items():
        assert f"{name}: {nan} NaN" in err if nan else f"{name}: {inf} Inf" in err, (name, err)
