"""FP8 block-scaled checkpoints (DeepSeek-V3 layout): dequantize on import, plain or requantized export,
and the refusals (missing scale, wrong-shape scale, scale without its weight, config contradictions)."""
from __future__ import annotations

import json

import pytest
import torch

from checkpoints import fp8
from checkpoints.cli import main
from checkpoints.hf_reader import open_hf_checkpoint
from converters.errors import ConversionError

from convert_cases import (
    FP8, FP8_SHAPES, QUANT, bits, dequantize_blocks, fp8_tensors, is_quantized_name, llama_config, quantize_blocks,
    read_config, read_hf, write_fp8,
)


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An FP8 HF checkpoint (edge blocks everywhere: 160 and 300 are not multiples of 128)."""
    cfg = llama_config(**FP8_SHAPES)
    tensors = fp8_tensors(cfg)
    root = tmp_path_factory.mktemp("fp8")
    write_fp8(root / "hf", cfg, tensors, shard=200_000)
    return root / "hf", tensors


def convert(*args) -> int:
    return main(["convert", *map(str, args), "-q"])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("convcheck: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------ the maths
@pytest.mark.parametrize("shape", [(128, 128), (300, 160), (1, 5), (129, 257), (256, 1)])
def test_quantize_matches_the_recipe_and_dequantize_inverts_it(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05
    q, s = fp8.quantize(w, (128, 128))
    ref_q, ref_s = quantize_blocks(w)
    assert s.shape == fp8.scale_shape(shape, (128, 128)) == ref_s.shape
    assert torch.allclose(s, ref_s, rtol=1e-6, atol=0)
    assert (q.float() - ref_q.float()).abs().max() <= 2 ** -6 * 448  # one fp8 step at most (division order)
    assert torch.equal(fp8.dequantize(ref_q, ref_s, (128, 128), torch.float32), dequantize_blocks(ref_q, ref_s))
    again_q, again_s = fp8.quantize(fp8.dequantize(ref_q, ref_s, (128, 128), torch.bfloat16), (128, 128))
    assert torch.equal(bits(again_q), bits(ref_q))  # float8 codes survive a bf16 round trip exactly
    assert torch.allclose(again_s, ref_s, rtol=2 ** -7)


def test_all_zero_block_gets_a_unit_scale():
    q, s = fp8.quantize(torch.zeros(130, 3), (128, 128))
    assert torch.equal(s, torch.ones(2, 1)) and not q.float().any()


def test_compact_names_is_exact():
    names = [f"model.layers.{i}.{m}.weight" for i in range(12) for m in ("q_proj", "o_proj", "norm")]
    quantized = [n for n in names if "proj" in n and not n.startswith("model.layers.3.o_proj")]
    record = fp8.compact_names(quantized, names)
    assert record == {"patterns": ["model.layers.*.q_proj.weight"],
                      "names": sorted(n for n in quantized if "o_proj" in n)}
    assert fp8.expand_names(record, names) == set(quantized)
    with pytest.raises(ConversionError, match="does not produce"):
        fp8.expand_names(record, [n for n in names if "layers.0.o_proj" not in n])


# ------------------------------------------------------------------------------------- import
@pytest.mark.parametrize("dtype", ["keep", "fp32", "fp16"])
def test_import_dequantizes_into_the_requested_dtype(model, tmp_path, dtype):
    src, tensors = model
    assert convert(src, tmp_path / "native", "--dtype", dtype) == 0
    assert convert(tmp_path / "native", tmp_path / "plain") == 0
    out = read_hf(tmp_path / "plain")
    expected_dtype = {"keep": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
    assert sorted(out) == sorted(n for n in tensors if not n.endswith("_scale_inv"))
    for name, t in out.items():
        assert t.dtype == expected_dtype, name
        if is_quantized_name(name):
            assert torch.equal(t, dequantize_blocks(tensors[name], tensors[name + "_scale_inv"]).to(expected_dtype)), name
        else:
            assert torch.equal(t, tensors[name].to(expected_dtype)), name
    config = read_config(tmp_path / "plain")
    assert "quantization_config" not in config and config["dtype"] == str(expected_dtype).removeprefix("torch.")
    metadata = json.loads((tmp_path / "native" / "config.json").read_text())["metadata"]["hf_quantization"]
    assert metadata["quantization_config"] == QUANT
    assert metadata["quantized"]["patterns"] and not metadata["quantized"]["names"]


def test_requantize_reproduces_the_quantized_layout(model, tmp_path):
    src, tensors = model
    assert convert(src, tmp_path / "native", "--weight-dtype", "fp32") == 0  # dequantized in fp32, the rest kept
    assert convert(tmp_path / "native", tmp_path / "hf", "--requantize", "--max-shard-size", "200KB") == 0
    out = read_hf(tmp_path / "hf")
    assert sorted(out) == sorted(tensors)
    for name, t in tensors.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
        if t.dtype == FP8:
            assert torch.equal(bits(out[name]), bits(t)), name  # the float8 codes, bit for bit
        elif name.endswith("_scale_inv"):
            assert torch.equal(bits(out[name]), bits(t)), name  # amax / 448 scales, bit for bit (fp8.py)
        else:
            assert torch.equal(out[name], t), name
    config = read_config(tmp_path / "hf")
    assert config["quantization_config"] == QUANT and config["dtype"] == "bfloat16"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert all(n + "_scale_inv" in index["weight_map"] for n in tensors if is_quantized_name(n))


def test_weight_dtype_writes_plain_weights(model, tmp_path):
    src, tensors = model
    assert convert(src, tmp_path / "native", "--dtype", "fp32") == 0
    assert convert(tmp_path / "native", tmp_path / "hf", "--weight-dtype", "bf16") == 0
    out = read_hf(tmp_path / "hf")
    assert not any(n.endswith("_scale_inv") for n in out)
    assert {n: t.dtype for n, t in out.items() if is_quantized_name(n)} == {
        n: torch.bfloat16 for n in tensors if is_quantized_name(n)}
    assert {t.dtype for n, t in out.items() if not is_quantized_name(n)} == {torch.float32}
    assert "quantization_config" not in read_config(tmp_path / "hf")


def test_stream_api_gives_the_disk_tensors_with_requantize(model, tmp_path):
    from checkpoints.plan import stream_hf_weights
    src, _ = model
    assert convert(src, tmp_path / "native") == 0
    assert convert(tmp_path / "native", tmp_path / "hf", "--requantize") == 0
    disk = read_hf(tmp_path / "hf")
    streamed = dict(stream_hf_weights(tmp_path / "native", requantize=True))
    assert sorted(streamed) == sorted(disk)
    assert all(torch.equal(bits(streamed[n]), bits(disk[n])) for n in disk)


# ------------------------------------------------------------------------------------ refusals
def _variant(model, tmp_path, case):
    _, tensors = model
    cfg = llama_config(**FP8_SHAPES)
    tensors = dict(tensors)
    quant = QUANT
    victim = "model.layers.1.mlp.down_proj.weight"
    if case == "missing_scale":
        del tensors[victim + "_scale_inv"]
    elif case == "wrong_scale_shape":
        tensors[victim + "_scale_inv"] = torch.ones(2, 2)
    elif case == "scale_without_weight":
        tensors["model.layers.1.mlp.nope_proj.weight_scale_inv"] = torch.ones(1, 1)
    elif case == "scale_for_plain_weight":
        tensors["model.norm.weight_scale_inv"] = torch.ones(1, 1)
    elif case == "no_quantization_config":
        quant = None
    elif case == "config_without_fp8":
        tensors = {n: (dequantize_blocks(t, tensors[n + "_scale_inv"]).bfloat16() if t.dtype == FP8 else t)
                   for n, t in tensors.items() if not n.endswith("_scale_inv")}
    elif case == "unsupported_method":
        quant = {**QUANT, "quant_method": "awq"}
    elif case == "per_tensor":
        quant = {k: v for k, v in QUANT.items() if k != "weight_block_size"}
    return write_fp8(tmp_path / "bad", cfg, tensors, quant=quant), victim


@pytest.mark.parametrize("case,expected", [
    ("missing_scale", "has no scale 'model.layers.1.mlp.down_proj.weight_scale_inv'"),
    ("wrong_scale_shape", "'model.layers.1.mlp.down_proj.weight_scale_inv' has shape (2, 2)"),
    ("scale_without_weight", "'model.layers.1.mlp.nope_proj.weight', which does not exist"),
    ("scale_for_plain_weight", "'model.norm.weight', which is torch.bfloat16, not float8"),
    ("no_quantization_config", "config.json has no quantization_config"),
    ("config_without_fp8", "no tensor is float8"),
    ("unsupported_method", "quant_method='awq'"),
    ("per_tensor", "weight_block_size=None"),
])
def test_bad_fp8_checkpoint_exits_2_naming_the_tensor(model, tmp_path, capsys, case, expected):
    src, _ = _variant(model, tmp_path, case)
    assert convert(src, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert expected in err, err
    assert not (tmp_path / "out").exists()


def test_requantize_and_weight_dtype_need_an_fp8_origin(tmp_path, capsys):
    from convert_cases import hf_tensors, write_hf
    cfg = llama_config()
    write_hf(tmp_path / "hf", cfg, hf_tensors(cfg))
    assert convert(tmp_path / "hf", tmp_path / "native") == 0
    for option in (["--requantize"], ["--weight-dtype", "bf16"]):
        assert convert(tmp_path / "native", tmp_path / "out", *option) == 2
        assert "records no FP8-quantized weights" in one_line_error(capsys)
    assert convert(tmp_path / "hf", tmp_path / "out", "--weight-dtype", "bf16") == 2
    assert "has no FP8 weights" in one_line_error(capsys)
    assert convert(tmp_path / "hf", tmp_path / "out", "--requantize") == 2
    assert "--requantize applies to a native -> HF" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_inspect_reads_headers_only(model, monkeypatch):
    src, _ = model
    reader = open_hf_checkpoint(src)
    monkeypatch.setattr(reader, "load_many", lambda *a: pytest.fail("inspect must not read tensor data"))
    scheme = fp8.inspect(reader, reader.config)
    assert scheme.block == (128, 128) and scheme.config == QUANT


def test_amax_scales_survive_a_float32_dequantization_exactly():
    """The lemma behind exact ``--requantize`` scales (fp8.py): for every float32 ``amax`` (every
    significand, two binades), the scale ``s = fl(amax / 448)`` is restored by the requantization
    ``fl(fl(448 s) / 448)``. (Not so for an arbitrary float32 scale: about 11% of them are not.)"""
    significands = torch.arange(0x3F800000, 0x40000000, dtype=torch.int64).to(torch.int32).view(torch.float32)
    for exponent in (8, 9):
        s = significands * 2.0 ** exponent / fp8.FP8_MAX
        assert torch.equal(bits((s * fp8.FP8_MAX) / fp8.FP8_MAX), bits(s))
