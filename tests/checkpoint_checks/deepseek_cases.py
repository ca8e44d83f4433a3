"""Tiny DeepSeek checkpoints for the DeepSeek tests: the real DeepSeek-V3 and DeepSeek-V2-Lite
configs scaled down, HF directories written from a random native state (MTP layers optional), an
FP8 DeepSeek-V3 checkpoint in DeepSeek's own layout, and :func:`mtp_carried`, the check that MTP
layers survive HF → native → HF through ``convcheck convert``."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

import checkpoints
import native
from checkpoints.cli import main
from checkpoints.hf_writer import write_hf_checkpoint
from converters import get
from native.layout import MTP_KEY
from strategies import deepseek_v2, deepseek_v3

from convert_cases import QUANT, bits, quantize_blocks, read_config, read_hf

#: what DeepSeek-V3's checkpoint stores in float8 (with a ``weight_scale_inv``): every projection of
#: attention, dense MLPs, experts, shared experts and MTP's ``eh_proj``. The embeddings, the head,
#: every norm, the router (``mlp.gate.weight``) and ``e_score_correction_bias`` stay unquantized.
FP8_WEIGHT = re.compile(r"(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|gate_proj|up_proj|down_proj|"
                        r"eh_proj)\.weight$")


def real_scaled(version: str) -> dict:
    """The scaled-down real config of ``deepseek_v3`` (DeepSeek-V3) or ``deepseek_v2`` (V2-Lite)."""
    strategy = deepseek_v3 if version == "deepseek_v3" else deepseek_v2
    return strategy.hf_examples()[-1]


def convert(*args) -> int:
    return main(["convert", *map(str, args), "-q"])


def native_state(cfg: native.ModelConfig, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    return native.random_state(cfg, seed, dtype=dtype)


def write_hf_from_native(path: Path, hf_config: dict, cfg: native.ModelConfig, state, *, shard=10**12) -> Path:
    converter = get(hf_config["model_type"])
    tensors = dict(converter.export_weights(cfg, state))
    write_hf_checkpoint(path, hf_config, tensors, max_shard_size=shard)
    return path


def with_mtp(cfg: native.ModelConfig, count: int = 1) -> native.ModelConfig:
    return dataclasses.replace(cfg, metadata={**cfg.metadata, MTP_KEY: count})


def mtp_carried(tmp_path: Path, hf_config: dict, dtype: torch.dtype = torch.bfloat16) -> dict:
    """HF checkpoint with ``num_nextn_predict_layers`` MTP layers → native → HF: the native state
    holds every MTP tensor (``mtp.{j}.*``) and the HF output has every input tensor with the same
    bytes. Raises AssertionError naming what went missing or changed; returns the HF tensors."""
    converter = get(hf_config["model_type"])
    count = hf_config["num_nextn_predict_layers"]
    cfg = with_mtp(converter.import_config(hf_config), count)
    src = write_hf_from_native(tmp_path / "hf", {**hf_config, "dtype": str(dtype).removeprefix("torch.")}, cfg,
                               native_state(cfg, dtype))
    tensors = read_hf(src)
    L = cfg.num_layers
    mtp_names = [n for n in tensors if (m := re.match(r"model\.layers\.(\d+)\.", n)) and int(m.group(1)) >= L]
    assert mtp_names, f"the source checkpoint has no model.layers.{L}.* tensors"
    assert convert(src, tmp_path / "native") == 0, "HF -> native refused the MTP checkpoint"
    back_cfg, state = checkpoints.load_checkpoint(tmp_path / "native")
    expected = [n for j in range(count) for n in native.layout.mtp_shapes(back_cfg, j)]
    absent = sorted(set(expected) - set(state))
    assert expected and not absent, f"the native checkpoint lacks MTP tensors: {absent[:4] or 'all of them'}"
    assert convert(tmp_path / "native", tmp_path / "out") == 0, "native -> HF refused"
    out = read_hf(tmp_path / "out")
    missing = sorted(set(tensors) - set(out))
    assert not missing, f"dropped on the way: {missing[:6]}"
    changed = [n for n in tensors if not torch.equal(bits(tensors[n]), bits(out[n]))]
    assert not changed, f"changed bytes: {changed[:6]}"
    assert read_config(tmp_path / "out")["num_nextn_predict_layers"] == count
    return out


def fp8_checkpoint(path: Path, cfg: native.ModelConfig, hf_config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A DeepSeek-V3 checkpoint in its released layout: projections float8_e4m3fn with a
    ``weight_scale_inv`` per 128 x 128 block, the rest bf16, ``e_score_correction_bias`` float32."""
    converter = get("deepseek_v3")
    plain = dict(converter.export_weights(cfg, native_state(cfg, torch.float32, seed)))
    tensors = {}
    for name, t in plain.items():
        if FP8_WEIGHT.search(name):
            tensors[name], tensors[name + "_scale_inv"] = quantize_blocks(t)
        elif name.endswith("e_score_correction_bias"):
            tensors[name] = t
        else:
            tensors[name] = t.to(torch.bfloat16)
    write_hf_checkpoint(path, {**hf_config, "dtype": "bfloat16", "quantization_config": QUANT}, tensors,
                        max_shard_size=300_000)
    return tensors
