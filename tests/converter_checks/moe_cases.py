"""Helpers for the MoE converter tests (mixtral, qwen2_moe, qwen3_moe): config round trips through
transformers' own config class, forward passes of exported checkpoints loaded from disk the way
users load them, and ``save_pretrained`` round trips.

Every HF model here is read from a temporary directory with ``from_pretrained`` (offline): that is
the on-disk path (per-expert tensors), not the fused in-memory layout. Float64 MoE needs
``experts_implementation="eager"``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

import native
from checkpoints.hf_reader import open_hf_checkpoint
from checkpoints.hf_writer import write_hf_checkpoint
from properties import normalize

#: float64 native vs float64 HF (which keeps rotary tables, norms and the router softmax in float32)
FORWARD_TOLERANCE = 1e-6
HF_KWARGS = {"attn_implementation": "eager", "experts_implementation": "eager", "local_files_only": True}


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def assert_hf_roundtrip(converter, hf: Mapping[str, Any]) -> native.ModelConfig:
    """``normalize(export(import(h))) == normalize(h)``; the export imports back to the same config."""
    cfg = converter.import_config(hf)
    out = converter.export_config(cfg)
    expected, actual = normalize(hf), normalize(out)
    diff = {k: (expected.get(k, "<absent>"), actual.get(k, "<absent>"))
            for k in sorted(set(expected) | set(actual)) if expected.get(k, "<absent>") != actual.get(k, "<absent>")}
    assert not diff, f"normalize(export(import(h))) != normalize(h): {diff}"
    assert converter.import_config(out) == cfg
    assert not converter.unclaimed_fields(cfg)
    return cfg


def batch(cfg: native.ModelConfig, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of random tokens; the second right-padded over its last third, but by fewer tokens
    than the smallest window: transformers' eager attention in float64 adds ``finfo(float64).min``
    and takes the softmax in float32 (``-inf``), so a padding query that sees no real key is NaN and
    poisons its row in the next layer."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    windows = [b.attention.window for b in cfg.decoder.blocks if b.attention.window is not None]
    pad = min([length // 3] + [w - 1 for w in windows])
    if pad:
        mask[1, length - pad:] = 0
    return ids, mask


def native_logits(cfg: native.ModelConfig, state: Mapping[str, torch.Tensor], ids, mask) -> torch.Tensor:
    model = native.NativeModel(cfg).to(torch.float64)
    model.load_state_dict(dict(state))
    with torch.no_grad():
        return model(ids, mask)


def hf_logits_from_disk(directory: Path, ids, mask) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64, output_loading_info=True,
                                                       **HF_KWARGS)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"from_pretrained: {problems}"
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def relative_error(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over the real (unpadded) positions."""
    valid = mask.bool()
    return ((a[valid] - b[valid]).norm() / b[valid].norm()).item()


def export_to_disk(converter, cfg, state, directory: Path) -> Path:
    write_hf_checkpoint(directory, converter.export_config(cfg), converter.export_weights(cfg, state))
    return directory


def forward_error(converter, cfg: native.ModelConfig, tmp_path: Path, *, length: int, seed: int = 0,
                  state: Mapping[str, torch.Tensor] | None = None) -> float:
    """Native float64 logits vs the HF model loaded from the exported checkpoint."""
    state = native.random_state(cfg, seed, dtype=torch.float64) if state is None else state
    ids, mask = batch(cfg, length, seed)
    directory = export_to_disk(converter, cfg, state, tmp_path / f"hf-{seed}")
    return relative_error(hf_logits_from_disk(directory, ids, mask), native_logits(cfg, state, ids, mask), mask)


def save_pretrained_roundtrip(converter, hf: Mapping[str, Any], tmp_path: Path, seed: int = 0) -> native.ModelConfig:
    """A tiny HF model built by transformers and written by ``save_pretrained`` → import (config
    and weights) → export: the same config (normalised) and every tensor bit-exact, by name."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(**dict(hf))
    model = AutoModelForCausalLM.from_config(config, **{k: v for k, v in HF_KWARGS.items() if k != "local_files_only"})
    with torch.no_grad():  # every tensor random (norms and routers included), so a swap shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    model.save_pretrained(tmp_path / "saved")
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    reader = open_hf_checkpoint(tmp_path / "saved")
    cfg = converter.import_config(saved_config)
    native_state = dict(converter.import_weights(cfg, reader))
    exported = dict(converter.export_weights(cfg, native_state))
    assert sorted(exported) == sorted(reader.keys())
    for name, tensor in exported.items():
        original = reader[name]
        assert tensor.dtype == original.dtype and tensor.shape == original.shape, name
        assert torch.equal(tensor.view(torch.uint8) if tensor.dtype != torch.bool else tensor,
                           original.view(torch.uint8) if original.dtype != torch.bool else original), name
    assert normalize(converter.export_config(cfg)) == normalize(saved_config)
    return cfg


def hf_structure(hf: Mapping[str, Any]) -> list[tuple[bool, bool]]:
    """Per layer ``(sparse, sliding)`` as transformers builds the model from this config: the
    reference for the converters' reading of ``decoder_sparse_step``/``mlp_only_layers``/``layer_types``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**dict(hf))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layer_types = getattr(config, "layer_types", None)
    sliding_all = getattr(config, "sliding_window", None) is not None and layer_types is None
    out = []
    for i, layer in enumerate(model.model.layers):
        sparse = hasattr(layer.mlp, "experts")
        sliding = sliding_all or (layer_types is not None and layer_types[i] == "sliding_attention")
        out.append((sparse, sliding))
    return out


def native_structure(cfg: native.ModelConfig) -> list[tuple[bool, bool]]:
    return [(isinstance(b.mlp, native.MoEConfig), b.attention.window is not None) for b in cfg.decoder.layers()]
