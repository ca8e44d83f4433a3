"""Gemma3 text (``model_type: gemma3_text``).

Differences from :mod:`strategies.gemma2`:

- per-head RMS q/k norm with the model's single ``rms_norm_eps``;
- no attention softcap (transformers' Gemma3 attention applies none); final softcap optional;
- sliding layers and full layers may differ in their rotary embedding (local vs global theta,
  scaling on either): drawn as a layer pattern whose flagged layers get both the window and a
  redrawn rotary, so every sliding/global mix of up to 4 layers (5:1, 1:1, all sliding, all
  global, arbitrary) is reachable. Without a window all layers share one rotary;
- YaRN always truncates (transformers ignores a per-layer-type ``truncate``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from . import gemma2
from .gemma import _broken, scaled_down
from .gemma2 import BREAKS as _GEMMA2_BREAKS, CONSTRAINTS as _GEMMA2, FULL, SLIDING, _layer0, with_query_pre_attn_scalar
from .generic import native_configs as _native_configs

MODEL_TYPE = "gemma3_text"
ARCHITECTURE = "Gemma3ForCausalLM"

CONSTRAINTS = {
    **_GEMMA2,
    "qk_norms": ("head",),
    "qk_norm_kinds": ("rms_zero_centered",),
    "attention_softcaps": ("none",),
    "windows": ("patterned",),
    "layer_patterns": ("every_k", "alternating", "uniform", "suffix", "prefix", "arbitrary"),
    "varying": ("rotary",),
}
#: without sliding layers, or with every layer sliding, all layers are one type: one rotary
UNIFORM = {"windows": ("none", "uniform"), "layer_patterns": ("uniform",), "varying": ()}


def _truncating(rotary):
    """transformers' Gemma3 YaRN always truncates (it ignores a per-layer-type ``truncate``)."""
    return dataclasses.replace(rotary, truncate=True) if isinstance(rotary, native.YarnRotary) else rotary


@st.composite
def native_configs(draw, **overrides) -> native.ModelConfig:
    """Native configs a Gemma3 converter must accept."""
    constraints = {**CONSTRAINTS, **overrides}
    mixed = _native_configs(**constraints)
    uniform = _native_configs(**{**constraints, **UNIFORM})
    cfg = draw(with_query_pre_attn_scalar(draw(st.one_of(mixed, uniform))))
    return hc.hf_buildable(mu.every_block(cfg, lambda b: dataclasses.replace(
        b, attention=dataclasses.replace(b.attention, rotary=_truncating(b.attention.rotary)))))


def _yarn_not_truncating(cfg, draw):
    a = cfg.decoder.layer(0).attention
    yarn = native.YarnRotary(theta=10000.0, original_max_position_embeddings=min(4, cfg.max_position_embeddings),
                             truncate=False)
    return mu.every_attention(cfg, rotary=yarn, head_dim=max(a.head_dim, 2))


# ------------------------------------------------------------------------------- unrepresentable
def _rotary_differs_in_type(cfg, draw):
    """Two layers of the same type (both full) with different rotary thetas."""
    layers = mu.at_least_layers(mu.every_attention(cfg, window=None), 2).decoder.layers()
    a = layers[0].attention
    layers[0] = dataclasses.replace(layers[0], attention=dataclasses.replace(
        a, rotary=native.DefaultRotary(theta=draw(bb.thetas()))))
    layers[1] = dataclasses.replace(layers[1], attention=dataclasses.replace(
        a, rotary=native.DefaultRotary(theta=layers[0].attention.rotary.theta + 1.0)))
    return mu.with_layers(cfg, layers)


BREAKS = {
    **{k: v for k, v in _GEMMA2_BREAKS.items() if k not in ("qk_norm", "softcaps_differ")},
    "attention_softcap": ("attention.logit_softcap", lambda cfg, draw: mu.every_attention(
        cfg, logit_softcap=draw(bb.positive_floats(0.5, 60.0)))),
    "no_qk_norm": ("attention.qk_norm", lambda cfg, draw: mu.every_attention(cfg, qk_norm=None)),
    "qk_layer_norm": ("attention.qk_norm", lambda cfg, draw: mu.every_attention(
        cfg, qk_norm=native.LayerNormConfig(eps=cfg.final_norm.eps, bias=False))),
    "qk_norm_full": ("attention.qk_norm_scope", lambda cfg, draw: mu.every_attention(cfg, qk_norm_scope="full")),
    "rotary_differs": ("attention.rotary", _rotary_differs_in_type),
    "yarn_no_truncate": ("truncate", _yarn_not_truncating),
    "qk_eps_differs": ("rms_norm_eps", lambda cfg, draw: _layer0(cfg, qk_norm=dataclasses.replace(
        cfg.final_norm, eps=cfg.final_norm.eps * 3))),
}


def unrepresentable_configs() -> st.SearchStrategy[tuple[native.ModelConfig, str]]:
    """``(cfg, field)``: one feature Gemma3 cannot express, and the field the error must name."""
    return _broken(native_configs(), BREAKS)


# ------------------------------------------------------------------------------------- HF dicts
@st.composite
def layer_type_keys(draw, num_layers: int) -> dict[str, Any]:
    """``layer_types`` explicit, or derived from ``sliding_window_pattern`` (absent: 6), sometimes
    beside the private ``_sliding_window_pattern`` transformers 5 writes; a window of 1..8 or absent."""
    out: dict[str, Any] = {}
    how = draw(st.sampled_from(("pattern", "explicit", "default")))
    if how == "explicit":
        out["layer_types"] = draw(st.lists(st.sampled_from((SLIDING, FULL)), min_size=num_layers, max_size=num_layers))
    if how == "pattern" or (how == "explicit" and draw(st.booleans())):
        out["sliding_window_pattern"] = draw(st.integers(1, 6))
    if draw(st.booleans()):
        out["_sliding_window_pattern"] = out.get("sliding_window_pattern", 6)
    if draw(st.booleans()):
        out["sliding_window"] = draw(bb.windows())
    return out


def _truncating_dict(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "truncate": True} if params["rope_type"] == "yarn" else params


@st.composite
def rope_keys(draw, head_dim: int, max_position: int) -> dict[str, Any]:
    """Nested v5 ``rope_parameters`` (a layer type sometimes left to its default), or the v4 keys
    ``rope_theta`` (global), ``rope_local_base_freq`` (local) and ``rope_scaling`` (global only)."""
    if draw(st.booleans()):
        params = {}
        for layer_type in (SLIDING, FULL):
            if draw(st.integers(0, 3)):
                params[layer_type] = _truncating_dict(draw(hc.rope_parameters(head_dim, max_position)))
        return {"rope_parameters": params} if params or draw(st.booleans()) else {}
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["rope_theta"] = draw(bb.thetas())
    if draw(st.booleans()):
        out["rope_local_base_freq"] = draw(bb.thetas())
    if draw(st.booleans()):
        scaling = _truncating_dict(draw(hc.rope_parameters(head_dim, max_position)))
        scaling.pop("rope_theta")
        if scaling["rope_type"] == "default" and draw(st.booleans()):
            scaling = None
        out["rope_scaling"] = scaling
    return out


def optional_keys(layout: bb.HeadLayout) -> dict[str, st.SearchStrategy]:
    """Gemma2's, with no attention softcap (null if present)."""
    return {
        **gemma2.optional_keys(layout),
        "attn_logit_softcapping": st.none(),
        "final_logit_softcapping": st.one_of(st.none(), bb.positive_floats(0.5, 60.0)),
        "use_bidirectional_attention": st.sampled_from((False, None)),
    }


def hf_configs() -> st.SearchStrategy[dict[str, Any]]:
    """Gemma3TextConfig dicts: layer types explicit or by pattern, a rotary per layer type."""
    return gemma2.hf_configs_of(MODEL_TYPE, ARCHITECTURE, optional_keys, layer_type_keys, rope_keys)


#: google/gemma-3-1b-pt's config.json (transformers 4.50 era, v4 rope keys), for ``@example``.
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "float32", "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144,
}
#: The text part of google/gemma-3-4b-pt (linear rope scaling x8 on global layers), for ``@example``.
GEMMA3_4B_TEXT = {
    **GEMMA3_1B, "hidden_size": 2560, "intermediate_size": 10240, "num_attention_heads": 8,
    "num_key_value_heads": 4, "num_hidden_layers": 34, "sliding_window": 1024, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "vocab_size": 262208,
}


def hf_examples() -> list[dict[str, Any]]:
    """Gemma3TextConfig's default, gemma-3-1b and the text part of gemma-3-4b (v4 rope keys; linear
    x8 scaling on global layers), and both scaled down to 6 layers (5 sliding, 1 global) with
    window 3 for the tensor properties."""
    small = dict(hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=48, layers=6, vocab=61,
                 sliding_window=3, query_pre_attn_scalar=8, max_position_embeddings=64)
    return [hc.default_config(MODEL_TYPE), GEMMA3_1B, GEMMA3_4B_TEXT,
            scaled_down(GEMMA3_1B, **{**small, "kv_heads": 1}), scaled_down(GEMMA3_4B_TEXT, **small)]


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
