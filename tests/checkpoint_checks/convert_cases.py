"""Tiny checkpoints for the conversion tests (streaming, FP8, hostile inputs, SIGKILL).

HF directories are written with ``checkpoints.hf_writer`` from the Llama converter's own shapes, so no
transformers model is built (fast). FP8 checkpoints quantize their projection weights here, with
the usual recipe (per 128 x 128 block: scale = amax / 448, weight = value / scale in float8),
independently of ``checkpoints.fp8``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

import native
from checkpoints.hf_writer import write_hf_checkpoint
from converters import get

FP8 = torch.float8_e4m3fn
QUANT = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def llama_config(*, hidden: int = 32, heads: int = 4, kv_heads: int = 2, head_dim: int = 8, intermediate: int = 48,
                 layers: int = 2, vocab: int = 40, tied: bool = False) -> native.ModelConfig:
    block = native.BlockConfig(attention=native.AttentionConfig(heads=heads, kv_heads=kv_heads, head_dim=head_dim),
                               mlp=native.MLPConfig(intermediate=intermediate))
    return native.ModelConfig(hidden_size=hidden, embeddings=native.EmbeddingConfig(vocab_size=vocab),
                              decoder=native.DecoderConfig(blocks=(block,), pattern=(0,) * layers),
                              head=native.HeadConfig(tied=tied), metadata={"bos_token_id": 1, "eos_token_id": 2})


#: hidden and intermediate sizes that are not multiples of 128: FP8 edge blocks
FP8_SHAPES = dict(hidden=160, heads=5, kv_heads=1, head_dim=32, intermediate=300, layers=2, vocab=37)


def hf_tensors(cfg: native.ModelConfig, dtype=torch.bfloat16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in get("llama").hf_shapes(cfg).items():
        t = torch.randn(shape, generator=g, dtype=torch.float64) * (0.02 if len(shape) > 1 else 1.0)
        out[name] = (t + (1.0 if len(shape) == 1 else 0.0)).to(dtype)
    return out


def hf_config(cfg: native.ModelConfig, dtype: str = "bfloat16") -> dict:
    config = get("llama").export_config(cfg)
    config["dtype"] = dtype
    return config


def write_hf(path: Path, cfg: native.ModelConfig, tensors: dict, *, config: dict | None = None,
             shard: int | str = 10**12) -> Path:
    write_hf_checkpoint(path, config or hf_config(cfg), tensors, max_shard_size=shard)
    return path


def quantize_blocks(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = w.shape
    scale = torch.empty(math.ceil(rows / block), math.ceil(cols / block), dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=FP8)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            part = w[i * block:(i + 1) * block, j * block:(j + 1) * block].double()
            s = part.abs().max() / 448.0
            s = s if s > 0 else torch.tensor(1.0, dtype=torch.float64)
            scale[i, j] = s.float()
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (part / scale[i, j].double()).clamp(-448, 448).to(FP8)
    return q, scale


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, block: int = 128) -> torch.Tensor:
    rows, cols = q.shape
    full = scale.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return q.float() * full


def is_quantized_name(name: str) -> bool:
    return name.endswith("_proj.weight")


def fp8_tensors(cfg: native.ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """bf16 embeddings and norms; every projection weight FP8 with its ``_scale_inv``."""
    out = {}
    for name, t in hf_tensors(cfg, torch.float32, seed).items():
        if is_quantized_name(name):
            out[name], out[name + "_scale_inv"] = quantize_blocks(t)
        else:
            out[name] = t.to(torch.bfloat16)
    return out


def write_fp8(path: Path, cfg: native.ModelConfig, tensors: dict | None = None, *, quant: dict | None = QUANT,
              shard: int | str = 10**12) -> Path:
    config = hf_config(cfg)
    if quant is not None:
        config["quantization_config"] = quant
    return write_hf(path, cfg, tensors if tensors is not None else fp8_tensors(cfg), config=config, shard=shard)


def read_hf(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(file))
    return out


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def refused(src: Path, dst: Path, capsys, *fragments, extra=()) -> str:
    """``convcheck convert src dst`` exits 2 with one line naming the fragments; nothing at ``dst``
    changed, no temporary left."""
    from checkpoints.cli import main

    before = snapshot(dst) if dst.exists() else None
    assert main(["convert", str(src), str(dst), "-q", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convcheck: error:") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert (snapshot(dst) if dst.exists() else None) == before, "the destination changed"
    assert not list(dst.parent.glob(f".{dst.name}.tmp-*")), "a temporary directory was left behind"
    return err
