"""Gemma2 (``model_type: gemma2``).

Differences from :mod:`strategies.gemma`:

- sandwich blocks (norms before and after attention and MLP), all RMSNorm with one epsilon;
- ``hidden_size`` a multiple of ``num_attention_heads`` (``Gemma2Config.validate_architecture``);
- ``softmax_scale`` is ``query_pre_attn_scalar ** -0.5`` for an integer scalar, one per model
  (None when the scalar equals ``head_dim``);
- optional attention and final logit softcaps (one attention softcap for all layers);
- sliding windows on any subset of layers (explicit ``layer_types``), one window size;
- ``hidden_activation``: any native activation (``gelu`` is exact GELU here, unlike Gemma's
  ``hidden_act``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

import native
from converters.sliding import FULL, SLIDING
from native.feedforward_config import ACTIVATIONS

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from . import gemma
from .gemma import BREAKS as _GEMMA_BREAKS, CONSTRAINTS as _GEMMA, _broken, scaled_down
from .generic import native_configs as _native_configs

MODEL_TYPE = "gemma2"
ARCHITECTURE = "Gemma2ForCausalLM"
HF_ACTIVATIONS = gemma.HF_ACTIVATIONS

CONSTRAINTS = {
    **_GEMMA,
    "hidden": "multiple_of_heads",
    "max_layers": 4,
    "placements": ("sandwich",),
    "activations": ("gelu_tanh",) + tuple(a for a in ACTIVATIONS if a != "gelu_tanh"),
    "windows": ("patterned", "none", "uniform"),
    "layer_patterns": ("alternating", "uniform", "every_k", "suffix", "prefix", "arbitrary"),
    "attention_softcaps": ("any", "none"),
    "final_softcaps": ("any", "none"),
}


def scale_for(scalar: int | None, head_dim: int) -> float | None:
    """The native softmax scale of ``query_pre_attn_scalar`` (None: the head_dim default)."""
    return None if scalar is None or scalar == head_dim else scalar ** -0.5


@st.composite
def with_query_pre_attn_scalar(draw, cfg: native.ModelConfig) -> native.ModelConfig:
    """One ``query_pre_attn_scalar`` for the whole model (HF has one key): head_dim, or 1..512."""
    scalar = draw(st.one_of(st.none(), st.integers(1, 512)))
    return mu.every_attention(cfg, softmax_scale=scale_for(scalar, cfg.decoder.layer(0).attention.head_dim))


@st.composite
def native_configs(draw, **overrides) -> native.ModelConfig:
    """Native configs a Gemma2 converter must accept."""
    return hc.hf_buildable(draw(with_query_pre_attn_scalar(draw(_native_configs(**{**CONSTRAINTS, **overrides})))))


# ------------------------------------------------------------------------------- unrepresentable
def _two_windows(cfg, draw):
    w = draw(bb.windows(7))
    return mu.with_layers(cfg, [dataclasses.replace(b, attention=dataclasses.replace(b.attention, window=w + (i > 0)))
                                for i, b in enumerate(mu.at_least_layers(cfg, 2).decoder.layers())])


def _hidden_not_multiple(cfg, draw):
    a = cfg.decoder.layer(0).attention
    if a.heads == 1:
        cfg = mu.every_attention(cfg, heads=2, kv_heads=1)
    hidden = cfg.hidden_size + 1 if cfg.hidden_size % 2 == 0 else cfg.hidden_size
    hidden = hidden if hidden % cfg.decoder.layer(0).attention.heads else hidden + 1
    return dataclasses.replace(cfg, hidden_size=hidden,
                               embeddings=dataclasses.replace(cfg.embeddings, multiplier=hidden ** 0.5))


BREAKS = {
    **{k: v for k, v in _GEMMA_BREAKS.items()
       if k not in ("window", "attention_softcap", "final_softcap", "exact_gelu", "softmax_scale", "placement")},
    "placement": ("placement", lambda cfg, draw: mu.every_block(cfg, lambda b: dataclasses.replace(
        b, placement=draw(st.sampled_from(("pre", "post", "parallel")))))),
    "softmax_scale": ("attention.softmax_scale", lambda cfg, draw: mu.every_attention(
        cfg, softmax_scale=draw(bb.positive_floats(0.05, 1.0).filter(lambda s: round(s ** -2) ** -0.5 != s)))),
    "softmax_scale_default": ("attention.softmax_scale", lambda cfg, draw: mu.every_attention(
        cfg, softmax_scale=cfg.decoder.layer(0).attention.head_dim ** -0.5)),
    "windows_differ": ("attention.window", _two_windows),
    "hidden_not_multiple": ("hidden_size", _hidden_not_multiple),
    "softcaps_differ": ("attention.logit_softcap", lambda cfg, draw: _layer0(cfg, logit_softcap=61.0)),
}


def _layer0(cfg, **changes):
    """Layer 0 differs from the others (a two-layer minimum is enforced)."""
    return mu.mutate_attention(mu.at_least_layers(cfg, 2), 0, **changes)


def unrepresentable_configs() -> st.SearchStrategy[tuple[native.ModelConfig, str]]:
    """``(cfg, field)``: one feature Gemma2 cannot express, and the field the error must name."""
    return _broken(native_configs(), BREAKS)


# ------------------------------------------------------------------------------------- HF dicts
@st.composite
def layer_type_keys(draw, num_layers: int) -> dict[str, Any]:
    """Absent (alternating, sliding first) or explicit ``layer_types``; a window of 1..8 or absent
    (4096, inert in a short forward pass)."""
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["layer_types"] = draw(st.lists(st.sampled_from((SLIDING, FULL)), min_size=num_layers, max_size=num_layers))
    if draw(st.booleans()):
        out["sliding_window"] = draw(bb.windows())
    return out


def optional_keys(layout: bb.HeadLayout) -> dict[str, st.SearchStrategy]:
    """Gemma's, and ``hidden_activation`` (read here), ``query_pre_attn_scalar``, the softcaps and
    the inert ``cache_implementation``."""
    caps = st.one_of(st.none(), bb.positive_floats(0.5, 60.0))
    return {
        **gemma.optional_keys(layout),
        "hidden_activation": st.sampled_from(HF_ACTIVATIONS),
        "query_pre_attn_scalar": st.one_of(st.just(layout.head_dim), st.integers(1, 512)),
        "attn_logit_softcapping": caps,
        "final_logit_softcapping": caps,
        "cache_implementation": st.just("hybrid"),
    }


@st.composite
def hf_configs_of(draw, model_type: str, architecture: str, optional_keys, layer_type_keys, rope_keys) -> dict[str, Any]:
    """A Gemma2-like config dict: sizes (``hidden`` a multiple of the heads, up to 4 layers for the
    layer patterns), then the class's optional, layer-type and rope keys and the carried ones."""
    hf, layout = draw(hc.hf_sizes(model_type, hidden=("multiple_of_heads",), layers=bb.layer_counts(1, 4),
                                  head_dim="always"))
    hf.update(draw(hc.optional_keys(optional_keys(layout))))
    hf.update(draw(layer_type_keys(hf["num_hidden_layers"])))
    hf.update(draw(rope_keys(layout.head_dim, hf["max_position_embeddings"])))
    hf.update(draw(gemma.hf_extras(hf["vocab_size"], model_type, architecture)))
    return hf


def hf_configs() -> st.SearchStrategy[dict[str, Any]]:
    """Gemma2Config dicts: explicit ``layer_types`` or the alternating default, one rope for all layers."""
    return hf_configs_of(MODEL_TYPE, ARCHITECTURE, optional_keys, layer_type_keys, gemma.rope_keys)


#: google/gemma-2-2b (../shared/real_configs), for ``@example``.
GEMMA2_2B = hc.real_config("google__gemma-2-2b.json")


def hf_examples() -> list[dict[str, Any]]:
    """Gemma2Config's default, google/gemma-2-2b as published, and gemma-2-2b scaled down (window 3,
    softcaps and the alternating pattern kept; query_pre_attn_scalar = the new head_dim as in the
    original) for the tensor properties."""
    return [hc.default_config(MODEL_TYPE), GEMMA2_2B,
            scaled_down(GEMMA2_2B, hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=48, layers=3, vocab=61,
                        sliding_window=3, query_pre_attn_scalar=8)]


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
