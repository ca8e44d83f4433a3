"""Helpers shared by the native checkpoint tests: tiny configs, random states, bit-exact state
comparison, temporary-file leftovers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import native
from native import layout



@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """Durability is checkpoints.atomic's own test; here fsync would only cost time."""
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")


def tiny_config(num_layers: int = 4, *, tied: bool = False, moe: bool = False) -> native.ModelConfig:
    attention = native.AttentionConfig(heads=4, kv_heads=2, head_dim=8, q_bias=True)
    dense = native.BlockConfig(attention=attention, mlp=native.MLPConfig(intermediate=64))
    blocks = [dense]
    if moe:
        blocks.append(native.BlockConfig(
            norm=native.LayerNormConfig(), placement="sandwich", attention=attention,
            mlp=native.MoEConfig(experts=3, top_k=2, intermediate=16, shared_intermediate=8, shared_gate=True)))
    return native.ModelConfig(
        hidden_size=32,
        embeddings=native.EmbeddingConfig(vocab_size=40),
        decoder=native.DecoderConfig(blocks=tuple(blocks), pattern=tuple(i % len(blocks) for i in range(num_layers))),
        head=native.HeadConfig(tied=tied),
    )


def random_state(cfg: native.ModelConfig, dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for n, s in layout.state_shapes(cfg).items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name].contiguous().view(torch.uint8), b[name].contiguous().view(torch.uint8)), name  # bit-exact


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
