"""Native checkpoints the reader must refuse, naming what is wrong: missing or overlapping stages,
missing, extra or misshapen tensors, corrupt configs, DCP metadata and data files."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import checkpoints
from checkpoints import CheckpointError, native_format, native_writer
from native_checkpoint_cases import _no_fsync, random_state, tiny_config  # noqa: F401


# ------------------------------------------------------------------------------ load refusals
@pytest.fixture
def staged(tmp_path):
    """A 4-layer checkpoint in 3 stages (layers [0,2), [2,3), [3,4)) and its state."""
    cfg = tiny_config(num_layers=4)
    state = random_state(cfg)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state, pipeline_stages=3)
    return tmp_path / "c", cfg, state


def rewrite_stage(root: Path, stage: str, tensors: dict) -> None:
    manifest = (root / stage / "stage.json").read_bytes()
    shutil.rmtree(root / stage)
    native_writer._save_dcp(root / stage, tensors)
    (root / stage / "stage.json").write_bytes(manifest)


def stage_tensors(state: dict, root: Path, stage: str) -> dict:
    reader = checkpoints.open_checkpoint(root)
    return {n: state[n] for n in state if reader.stage_of(n) == stage}


def refused(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        checkpoints.load_checkpoint(path)
    with pytest.raises(CheckpointError):
        checkpoints.open_checkpoint(path)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


def test_missing_stage(staged):
    root, _, _ = staged
    shutil.rmtree(root / "pp1")
    refused(root, "pp1", "missing")


def test_missing_last_stage(staged):
    root, _, _ = staged
    shutil.rmtree(root / "pp2")
    refused(root, "pp2", "missing")


def test_overlapping_stages_by_manifest(staged):
    root, _, _ = staged
    (root / "pp1" / "stage.json").write_text(json.dumps({"stage": 1, "num_stages": 3, "layers": [1, 3]}))
    refused(root, "layer 1", "pp0", "pp1")


def test_same_tensor_in_two_stages(staged):
    root, _, state = staged
    tensors = stage_tensors(state, root, "pp1")
    rewrite_stage(root, "pp1", {**tensors, "layers.0.attn.o.weight": state["layers.0.attn.o.weight"]})
    refused(root, "layers.0.attn.o.weight", "pp0", "pp1")


def test_tensor_in_wrong_stage(staged):
    root, _, state = staged
    pp0 = stage_tensors(state, root, "pp0")
    pp1 = stage_tensors(state, root, "pp1")
    moved = "layers.1.mlp.fc1.weight"
    rewrite_stage(root, "pp1", {**pp1, moved: pp0.pop(moved)})
    rewrite_stage(root, "pp0", pp0)
    refused(root, moved, "pp1")


def test_layer_in_no_stage(staged):
    root, _, _ = staged
    (root / "pp1" / "stage.json").write_text(json.dumps({"stage": 1, "num_stages": 3, "layers": [2, 2]}))
    refused(root, "layer 2", "no stage")


def test_stage_beyond_declared_and_disagreeing_manifests(staged):
    root, _, _ = staged
    shutil.copytree(root / "pp2", root / "pp3")
    refused(root, "pp3")  # its manifest says stage 2
    (root / "pp3" / "stage.json").write_text(json.dumps({"stage": 3, "num_stages": 3, "layers": [4, 4]}))
    refused(root, "pp3", "beyond")
    (root / "pp3" / "stage.json").write_text(json.dumps({"stage": 3, "num_stages": 4, "layers": [4, 4]}))
    refused(root, "disagree")


@pytest.mark.parametrize("content", [None, b"{not json", b'{"stage": 1}', b"[1, 2]"])
def test_missing_or_corrupt_stage_manifest(staged, content):
    root, _, _ = staged
    file = root / "pp1" / "stage.json"
    if content is None:
        file.unlink()
    else:
        file.write_bytes(content)
    refused(root, "pp1", "stage.json")


def test_missing_tensor(staged):
    root, _, state = staged
    tensors = stage_tensors(state, root, "pp2")
    del tensors["final_norm.weight"]
    rewrite_stage(root, "pp2", tensors)
    refused(root, "missing tensor", "final_norm.weight", "pp2")


def test_missing_tensor_single_stage(tmp_path):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state)
    (tmp_path / "c" / ".metadata").unlink()
    (tmp_path / "c" / "__0_0.distcp").unlink()
    del state["layers.1.attn.q_bias"]
    native_writer._save_dcp(tmp_path / "c", state)
    refused(tmp_path / "c", "missing tensor", "layers.1.attn.q_bias")


def test_extra_tensor(staged):
    root, _, state = staged
    tensors = stage_tensors(state, root, "pp0")
    rewrite_stage(root, "pp0", {**tensors, "layers.0.attn.k_bias": torch.zeros(16)})
    refused(root, "extra tensor", "layers.0.attn.k_bias", "pp0")


def test_wrong_shape(staged):
    root, _, state = staged
    tensors = stage_tensors(state, root, "pp1")
    tensors["layers.2.mlp.fc2.weight"] = torch.zeros(32, 63)
    rewrite_stage(root, "pp1", tensors)
    refused(root, "layers.2.mlp.fc2.weight", "(32, 63)", "(32, 64)", "pp1")


@pytest.mark.parametrize("content", [None, b"", b"{\"hidden_size\": ", b"[]", b'{"format_version": 99}',
                                     b'{"format_version": 1, "hidden_size": -3}', b'{"format_version": 1, "bogus": 1}'])
def test_missing_or_corrupt_config(staged, content):
    root, _, _ = staged
    if content is None:
        (root / "config.json").unlink()
    else:
        (root / "config.json").write_bytes(content)
    refused(root, "config.json")


def test_config_for_another_model(staged):
    root, cfg, _ = staged
    (root / "config.json").write_text(tiny_config(num_layers=4, tied=True).to_json())
    refused(root, "extra tensor", "output.weight")


@pytest.mark.parametrize("how", ["missing", "garbage", "truncated", "empty", "not-metadata"])
def test_corrupt_dcp_metadata(staged, how):
    root, _, _ = staged
    file = root / "pp1" / ".metadata"
    data = file.read_bytes()
    if how == "missing":
        file.unlink()
    elif how == "garbage":
        file.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        file.write_bytes(b"")
    else:
        import pickle
        file.write_bytes(pickle.dumps({"state_dict_metadata": 1}))
    refused(root, "pp1", ".metadata")


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.999])
def test_truncated_or_missing_data_file(staged, fraction):
    root, _, _ = staged
    file = root / "pp2" / "__0_0.distcp"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * fraction)])
    refused(root, "pp2", "__0_0.distcp", "truncated")
    file.unlink()
    refused(root, "pp2", "__0_0.distcp", "missing")


def test_corrupt_data_bytes_reported_at_load(tmp_path):
    cfg = tiny_config(num_layers=2)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, random_state(cfg))
    file = tmp_path / "c" / "__0_0.distcp"
    file.write_bytes(b"\0" * file.stat().st_size)  # same size, so only reading the data can tell
    reader = checkpoints.open_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="embedding.weight"):
        reader["embedding.weight"]


def test_not_a_checkpoint(tmp_path):
    refused(tmp_path / "absent", "not a directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "config.json")
    cfg = tiny_config(num_layers=2)
    (tmp_path / "empty" / "config.json").write_text(cfg.to_json())
    refused(tmp_path / "empty", "no weights")


def test_flat_and_staged_together_is_ambiguous(tmp_path):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state)
    checkpoints.save_checkpoint(tmp_path / "s", cfg, state, pipeline_stages=2)
    shutil.copytree(tmp_path / "s" / "pp0", tmp_path / "c" / "pp0")
    refused(tmp_path / "c", "ambiguous")


def test_is_native_checkpoint(tmp_path, staged):
    root, cfg, state = staged
    assert native_format.is_native_checkpoint(root)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not native_format.is_native_checkpoint(hf)
    assert not native_format.is_native_checkpoint(tmp_path / "absent")


