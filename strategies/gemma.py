"""Gemma (``model_type: gemma``): native configs its converter must accept, HF dicts in both rope
forms, and native configs the format cannot express.

What HF Gemma (transformers 5.x ``GemmaConfig``/``modeling_gemma``) can express, and so what is drawn:

- pre-norm blocks, zero-centred RMSNorm (``1 + w``) everywhere with one ``rms_norm_eps``;
- embeddings scaled by ``hidden_size ** 0.5`` (always); tied or untied output;
- gated MLP with ``hidden_act`` ``gelu_pytorch_tanh`` (the legacy ``gelu`` means the same), ``silu``
  or ``relu``; no MLP bias; exact GELU is not expressible (``"gelu"`` is rewritten to tanh);
- ``attention_bias``: q, k, v and o all on or all off; GQA/MQA/MHA with a free ``head_dim`` and a
  free ``hidden_size`` (GemmaConfig does not validate ``hidden % heads``);
- rotary: default, linear, dynamic, llama3, yarn, longrope over the whole head;
- no window, softcap, softmax scale, q/k norm.

The HF strategies here (:func:`optional_keys`, :func:`rope_keys`, :func:`hf_extras`) are shared by
the Gemma2 and Gemma3 modules. HF dicts are written independently of the converter (the pieces come
from :mod:`strategies._hf_common`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from .generic import native_configs as _native_configs

MODEL_TYPE = "gemma"
ACTIVATIONS = ("gelu_tanh", "silu", "relu")
HF_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "silu", "relu")  # "gelu": GemmaConfig's legacy tanh

CONSTRAINTS = {
    **hc.PLAIN,
    "norm_kinds": ("rms_zero_centered",),
    "attention_biases": bb.BIAS_ALL_OR_NOTHING,
    "activations": ACTIVATIONS,
    "tied": (True, False),
    "embedding_multipliers": ("sqrt_hidden",),
}


def native_configs(**overrides) -> st.SearchStrategy[native.ModelConfig]:
    """Native configs a Gemma converter must accept (``overrides`` narrow or widen CONSTRAINTS);
    ``hf_buildable``: no dynamic rotary over 2 dims, which transformers cannot build."""
    return _native_configs(**{**CONSTRAINTS, **overrides}).map(hc.hf_buildable)


# ------------------------------------------------------------------------------- unrepresentable
def _partial_rotary(cfg):
    def fn(block):
        a = block.attention
        head_dim = max(4, a.head_dim)
        rotary = native.DefaultRotary(theta=getattr(a.rotary, "theta", 10000.0),
                                      fraction=bb.fraction_for(2 * max(1, head_dim // 4), head_dim))
        return dataclasses.replace(block, attention=dataclasses.replace(a, head_dim=head_dim, rotary=rotary))
    return mu.every_block(cfg, fn)


#: (native field the error must name, how to break a valid config). Shared with Gemma2/3, which
#: override entries by key.
BREAKS: dict[str, tuple[str, Any]] = {
    "placement": ("placement", lambda cfg, draw: mu.every_block(cfg, lambda b: dataclasses.replace(
        b, placement=draw(st.sampled_from(("post", "sandwich", "parallel")))))),
    "layer_norm": ("norm", lambda cfg, draw: mu.every_block(cfg, lambda b: dataclasses.replace(
        b, norm=native.LayerNormConfig(eps=b.norm.eps, bias=draw(st.booleans()))))),
    "qk_norm": ("attention.qk_norm", lambda cfg, draw: mu.every_attention(cfg, qk_norm=native.RMSNormConfig(
        eps=1e-6, zero_centered=True))),
    "gain_stored": ("zero_centered", lambda cfg, draw: mu.every_block(cfg, lambda b: dataclasses.replace(
        b, norm=dataclasses.replace(b.norm, zero_centered=False)))),
    "partial_rotary": ("fraction", lambda cfg, draw: _partial_rotary(cfg)),
    "no_rotary": ("rotary", lambda cfg, draw: mu.every_attention(cfg, rotary=native.NoRotary())),
    "multiplier": ("embeddings.multiplier", lambda cfg, draw: dataclasses.replace(
        cfg, embeddings=dataclasses.replace(cfg.embeddings, multiplier=draw(st.one_of(
            st.none(), bb.positive_floats(0.5, 10.0)).filter(lambda m: m != cfg.hidden_size ** 0.5))))),
    "window": ("attention.window", lambda cfg, draw: mu.every_attention(cfg, window=draw(bb.windows()))),
    "softmax_scale": ("attention.softmax_scale", lambda cfg, draw: mu.every_attention(
        cfg, softmax_scale=draw(bb.positive_floats(0.05, 1.0)))),
    "attention_softcap": ("attention.logit_softcap", lambda cfg, draw: mu.every_attention(
        cfg, logit_softcap=draw(bb.positive_floats(0.5, 60.0)))),
    "final_softcap": ("head.final_softcap", lambda cfg, draw: dataclasses.replace(
        cfg, head=native.HeadConfig(tied=cfg.head.tied, final_softcap=draw(bb.positive_floats(0.5, 60.0))))),
    "mlp_bias": ("bias", lambda cfg, draw: mu.every_mlp(cfg, bias=True)),
    "ungated": ("gated", lambda cfg, draw: mu.every_mlp(cfg, gated=False)),
    "exact_gelu": ("activation", lambda cfg, draw: mu.every_mlp(cfg, activation="gelu")),
    "moe": ("mlp", lambda cfg, draw: mu.every_block(cfg, lambda b: dataclasses.replace(
        b, mlp=native.MoEConfig(experts=2, top_k=1, intermediate=4, activation="silu")))),
    "bias_pattern": ("bias", lambda cfg, draw: mu.every_attention(cfg, q_bias=True, k_bias=True, v_bias=True, o_bias=False)),
    "two_eps": ("rms_norm_eps", lambda cfg, draw: dataclasses.replace(
        cfg, final_norm=dataclasses.replace(cfg.final_norm, eps=cfg.final_norm.eps * 2))),
    "heads_differ": ("attention.heads", lambda cfg, draw: mu.mutate_attention(
        mu.at_least_layers(cfg, 2), 0, heads=cfg.decoder.layer(0).attention.heads * 2,
        kv_heads=cfg.decoder.layer(0).attention.kv_heads * 2)),
}


@st.composite
def _broken(draw, base: st.SearchStrategy, breaks: dict[str, tuple[str, Any]]):
    name = draw(st.sampled_from(sorted(breaks)))
    field, breaker = breaks[name]
    return breaker(draw(base), draw), field


def unrepresentable_configs(breaks: dict | None = None, base: st.SearchStrategy | None = None
                            ) -> st.SearchStrategy[tuple[native.ModelConfig, str]]:
    """``(cfg, field)``: a valid native config with one feature Gemma cannot express, and the native
    field (dotted, relative to its section) the ``ConversionError`` must name."""
    return _broken(base or native_configs(), breaks or BREAKS)


# ------------------------------------------------------------------------------------- HF dicts
@st.composite
def hf_extras(draw, vocab_size: int, model_type: str, architecture: str) -> dict[str, Any]:
    """The keys real configs carry that do not change the forward pass (token ids below the vocab)."""
    out: dict[str, Any] = {}
    ids = st.integers(0, vocab_size - 1)
    for key in ("bos_token_id", "pad_token_id"):
        if draw(st.booleans()):
            out[key] = draw(st.one_of(ids, st.none()))
    if draw(st.booleans()):
        out["eos_token_id"] = draw(st.one_of(ids, st.lists(ids, min_size=1, max_size=2)))
    if draw(st.booleans()):
        out["initializer_range"] = draw(st.sampled_from((0.02, 0.01)))
    if draw(st.booleans()):
        out["attention_dropout"] = 0.0
    if draw(st.booleans()):
        out["use_cache"] = draw(st.booleans())
    if draw(st.booleans()):
        out.update(architectures=[architecture], torch_dtype=draw(st.sampled_from(("bfloat16", "float32"))),
                   transformers_version=draw(st.sampled_from(("4.42.4", "5.0.0"))))
    return out


def optional_keys(layout: bb.HeadLayout) -> dict[str, st.SearchStrategy]:
    """GemmaConfig's keys that may be left to their class default (a small enough one)."""
    return {
        "rms_norm_eps": bb.epsilons(),
        "tie_word_embeddings": st.booleans(),
        "attention_bias": st.booleans(),
        "hidden_act": st.sampled_from(HF_ACTIVATIONS),
        "use_bidirectional_attention": st.sampled_from((None, False)),
    }


@st.composite
def rope_keys(draw, head_dim: int, max_position: int) -> dict[str, Any]:
    """One rotary for every layer, v5 or v4 (default rope without ``rope_scaling`` or ``null``)."""
    return draw(hc.rope_keys(draw(hc.rope_parameters(head_dim, max_position)), default_scaling=("absent", "null")))


@st.composite
def hf_configs(draw) -> dict[str, Any]:
    """GemmaConfig dicts: sizes small, every architecture key sometimes left to its class default
    (where that default is small enough), rope in the v4 or v5 form."""
    hf, layout = draw(hc.hf_sizes(MODEL_TYPE, head_dim="always"))
    hf.update(draw(hc.optional_keys(optional_keys(layout))))
    if draw(st.booleans()):  # transformers 4's key, inert in 5: agreeing with hidden_act or null
        act = hf.get("hidden_act", "gelu_pytorch_tanh")
        hf["hidden_activation"] = draw(st.sampled_from((None, "gelu_pytorch_tanh" if act == "gelu" else act)))
    hf.update(draw(rope_keys(layout.head_dim, hf["max_position_embeddings"])))
    hf.update(draw(hf_extras(hf["vocab_size"], MODEL_TYPE, "GemmaForCausalLM")))
    return hf


# ------------------------------------------------------------------------------ explicit examples
#: google/gemma-7b's config.json as published (transformers 4.38 era), for ``@example``.
GEMMA_7B = {
    "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3072, "initializer_range": 0.02,
    "intermediate_size": 24576, "max_position_embeddings": 8192, "model_type": "gemma",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 16, "pad_token_id": 0,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
    "transformers_version": "4.38.0.dev0", "use_cache": True, "vocab_size": 256000,
}


def scaled_down(h: dict[str, Any], *, hidden: int = 16, heads: int = 2, kv_heads: int = 1, head_dim: int = 8,
                intermediate: int = 24, layers: int = 2, vocab: int = 37, **extra) -> dict[str, Any]:
    """``_hf_common.scaled_down`` under Gemma's short names."""
    return hc.scaled_down(h, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          head_dim=head_dim, intermediate_size=intermediate, num_hidden_layers=layers,
                          vocab_size=vocab, **extra)


def hf_examples() -> list[dict[str, Any]]:
    """GemmaConfig's default, google/gemma-7b as published (legacy ``hidden_act: gelu``, v4 rope
    keys), and gemma-7b scaled down for the tensor properties."""
    return [hc.default_config(MODEL_TYPE), GEMMA_7B,
            scaled_down(GEMMA_7B, hidden=24, heads=4, kv_heads=4, head_dim=8, intermediate=40, layers=2, vocab=61)]


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
