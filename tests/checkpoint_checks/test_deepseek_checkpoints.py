"""DeepSeek-V2/V3 checkpoints through ``convcheck convert``: the scaled-down real configs round trip
HF → native → HF bit-exactly in float32 and bfloat16 with native logits equal to transformers'; MTP
layers are carried byte for byte (and never dropped); FP8 checkpoints in DeepSeek-V3's layout
dequantize, export plain or requantized, online and on disk. (The converters' configs and refusals:
tests/converter_checks/test_deepseek_v2.py and test_deepseek_v3.py.)"""
from __future__ import annotations

import pytest
import torch

import checkpoints
import native
from checkpoints import fp8
from checkpoints.hf_reader import open_hf_checkpoint
from checkpoints.plan import stream_hf_weights
from converters import get
from fixtures.tolerances import HAND_WRITTEN_FLOAT64
from native.layout import MTP_KEY
from properties.config import normalize

from convert_cases import QUANT, bits, dequantize_blocks, read_config, read_hf
from deepseek_cases import (
    convert, fp8_checkpoint, mtp_carried, native_state, real_scaled, with_mtp, write_hf_from_native,
)

V3, V2 = get("deepseek_v3"), get("deepseek_v2")


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")


# ---------------------------------------------------------------------------- disk round trips
def _hf_logits(path, ids, mask):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager",
                                                 experts_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("version", ["deepseek_v3", "deepseek_v2"])
def test_real_config_scaled_down_round_trips_through_the_cli(version, dtype, tmp_path):
    hf = real_scaled(version)
    converter = get(version)
    cfg = converter.import_config(hf)
    src = write_hf_from_native(tmp_path / "hf", {**hf, "dtype": str(dtype).removeprefix("torch.")}, cfg,
                               native_state(cfg, dtype), shard=20_000)
    assert convert(src, tmp_path / "native") == 0
    assert convert(tmp_path / "native", tmp_path / "back", "--max-shard-size", "20KB") == 0
    before, after = read_hf(src), read_hf(tmp_path / "back")
    assert sorted(before) == sorted(after)
    assert all(torch.equal(bits(before[n]), bits(after[n])) and before[n].dtype == after[n].dtype for n in before)
    assert normalize(read_config(tmp_path / "back")) == normalize(read_config(src))

    model = checkpoints.load_model(tmp_path / "native", dtype=torch.float64).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
    theirs = _hf_logits(tmp_path / "back", ids, mask)
    valid = mask.bool()
    error = ((ours - theirs)[valid].norm() / theirs[valid].norm()).item()
    assert error < HAND_WRITTEN_FLOAT64, f"native vs transformers logits: relative error {error:.2e}"


# -------------------------------------------------------------------------------------------- MTP
def _mtp_config(count: int = 1) -> dict:
    return {**real_scaled("deepseek_v3"), "num_nextn_predict_layers": count}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_mtp_layers_are_carried_byte_exact(tmp_path, dtype):
    out = mtp_carried(tmp_path, _mtp_config(), dtype)
    L = real_scaled("deepseek_v3")["num_hidden_layers"]
    for name in ("embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                 "shared_head.head.weight", "self_attn.kv_a_layernorm.weight", "mlp.gate.e_score_correction_bias",
                 "mlp.experts.0.gate_proj.weight", "mlp.shared_experts.down_proj.weight"):
        assert f"model.layers.{L}.{name}" in out


def test_mtp_layers_keep_the_native_layout(tmp_path):
    """In native, an MTP layer's block is converted like any layer (stacked experts, fc1 = [gate; up])."""
    cfg = with_mtp(V3.import_config(_mtp_config()))
    shapes = native.state_shapes(cfg)
    moe = cfg.decoder.layer(cfg.num_layers - 1).mlp
    assert shapes["mtp.0.layer.mlp.experts.fc1"] == (moe.experts, 2 * moe.intermediate, cfg.hidden_size)
    assert shapes["mtp.0.eh_proj.weight"] == (cfg.hidden_size, 2 * cfg.hidden_size)
    model = native.NativeModel(cfg)
    assert set(model.state_dict()) == set(shapes)


def test_checkpoint_without_its_declared_mtp_layers_converts(tmp_path):
    """transformers saves no MTP layer but keeps num_nextn_predict_layers: nothing to carry."""
    hf = _mtp_config()
    cfg = V3.import_config(hf)
    src = write_hf_from_native(tmp_path / "hf", hf, cfg, native_state(cfg, torch.float32))
    assert convert(src, tmp_path / "native") == 0
    back, _ = checkpoints.load_checkpoint(tmp_path / "native")
    assert MTP_KEY not in back.metadata


def test_mtp_layers_beyond_the_declared_count_are_refused(tmp_path, capsys):
    hf = _mtp_config()
    cfg = with_mtp(V3.import_config(hf))
    src = write_hf_from_native(tmp_path / "hf", {**hf, "num_nextn_predict_layers": 0}, cfg,
                               native_state(cfg, torch.float32))
    assert convert(src, tmp_path / "native") == 2
    err = capsys.readouterr().err
    assert f"model.layers.{cfg.num_layers}" in err and "num_nextn_predict_layers=0" in err
    assert not (tmp_path / "native").exists()


# ------------------------------------------------------------------------------------------- FP8
@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    """A DeepSeek-V3-shaped FP8 checkpoint, one dense and one MoE layer plus an MTP layer, with
    sizes that are not multiples of 128 (edge blocks everywhere)."""
    hf = {**real_scaled("deepseek_v3"), "hidden_size": 160, "num_attention_heads": 2, "num_key_value_heads": 2,
          "q_lora_rank": 136, "kv_lora_rank": 132, "qk_nope_head_dim": 24, "qk_rope_head_dim": 8, "v_head_dim": 20,
          "intermediate_size": 200, "moe_intermediate_size": 72, "n_routed_experts": 4, "n_group": 2,
          "topk_group": 1, "num_experts_per_tok": 2, "num_nextn_predict_layers": 1, "vocab_size": 61}
    cfg = with_mtp(V3.import_config(hf))
    root = tmp_path_factory.mktemp("deepseek_fp8")
    tensors = fp8_checkpoint(root / "hf", cfg, hf)
    return root / "hf", tensors, cfg


def _counts(tensors) -> tuple[int, int]:
    scales = sum(n.endswith(fp8.SCALE_SUFFIX) for n in tensors)
    return len(tensors) - scales, scales


def test_fp8_layout_is_deepseeks(fp8_model):
    src, tensors, cfg = fp8_model
    quantized = {n for n, t in tensors.items() if t.dtype == torch.float8_e4m3fn}
    assert all(n + "_scale_inv" in tensors for n in quantized)
    L = cfg.num_layers
    assert f"model.layers.{L}.eh_proj.weight" in quantized and "model.layers.1.mlp.experts.3.down_proj.weight" in quantized
    for plain in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight",
                  "model.layers.0.self_attn.kv_a_layernorm.weight", f"model.layers.{L}.shared_head.head.weight"):
        assert tensors[plain].dtype == torch.bfloat16
    assert tensors["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32


@pytest.mark.parametrize("weight_dtype", ["bf16", "fp32"])
def test_fp8_import_dequantizes_and_plain_export_drops_every_scale(fp8_model, tmp_path, weight_dtype):
    src, tensors, cfg = fp8_model
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[weight_dtype]
    assert convert(src, tmp_path / "native", "--weight-dtype", weight_dtype) == 0
    back_cfg, state = checkpoints.load_checkpoint(tmp_path / "native")
    assert back_cfg.metadata[MTP_KEY] == 1 and fp8.METADATA_KEY in back_cfg.metadata
    assert state["layers.0.attn.kv_up.weight"].dtype == torch_dtype
    expected = dequantize_blocks(tensors["model.layers.0.self_attn.kv_b_proj.weight"],
                                 tensors["model.layers.0.self_attn.kv_b_proj.weight_scale_inv"]).to(torch_dtype)
    assert torch.equal(state["layers.0.attn.kv_up.weight"], expected)

    assert convert(tmp_path / "native", tmp_path / "plain") == 0
    plain = read_hf(tmp_path / "plain")
    weights, scales = _counts(tensors)
    assert _counts(plain) == (weights, 0), "plain export: every weight once, no scale"
    assert not any(t.dtype == torch.float8_e4m3fn for t in plain.values())
    config = read_config(tmp_path / "plain")
    assert "quantization_config" not in config
    index = read_config_index(tmp_path / "plain")
    assert set(index) == set(plain)
    streamed = dict(stream_hf_weights(tmp_path / "native"))
    assert sorted(streamed) == sorted(plain)
    assert all(torch.equal(bits(streamed[n]), bits(plain[n])) for n in plain)


def read_config_index(path):
    import json

    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    with open_hf_checkpoint(path) as reader:
        return {n: files[0].name for n in reader.keys()}


def test_fp8_requantize_restores_the_codes_bit_exact(fp8_model, tmp_path):
    src, tensors, cfg = fp8_model
    assert convert(src, tmp_path / "native", "--weight-dtype", "fp32") == 0
    assert convert(tmp_path / "native", tmp_path / "fp8", "--requantize", "--max-shard-size", "300KB") == 0
    out = read_hf(tmp_path / "fp8")
    assert sorted(out) == sorted(tensors) and _counts(out) == _counts(tensors)
    for name, t in tensors.items():
        if t.dtype == torch.float8_e4m3fn:
            assert out[name].dtype == t.dtype and torch.equal(bits(out[name]), bits(t)), name
        elif name.endswith(fp8.SCALE_SUFFIX):
            assert torch.allclose(out[name], t, rtol=2 ** -20, atol=0), name
        else:
            assert out[name].dtype == t.dtype and torch.equal(bits(out[name]), bits(t)), name
    assert read_config(tmp_path / "fp8")["quantization_config"]["weight_block_size"] == QUANT["weight_block_size"]
    streamed = dict(stream_hf_weights(tmp_path / "native", requantize=True))
    assert sorted(streamed) == sorted(out)
    assert all(torch.equal(bits(streamed[n]), bits(out[n])) for n in out)


def test_mtp_check_rejects_a_converter_that_drops_mtp_layers(tmp_path, monkeypatch):
    """The meta-test of :func:`deepseek_cases.mtp_carried`: a converter that claims the MTP
    tensors on import and throws them away (tests/meta/broken.py) is caught."""
    from converters import registry
    from meta import broken  # tests/meta (tests/ is on sys.path through its conftest)

    mtp_carried(tmp_path / "good", _mtp_config())
    monkeypatch.setitem(registry._REGISTRY, "deepseek_v3", broken.mtp_dropped()())
    with pytest.raises(AssertionError, match="MTP"):
        mtp_carried(tmp_path / "bad", _mtp_config())
