"""Strategies for the ``phi3`` converter (see converters/phi3.py for the format's rules)."""
from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from .generic import native_configs as generic_configs

MODEL_TYPE = "phi3"
ARCHITECTURE = "Phi3ForCausalLM"
REAL = "microsoft__Phi-3-mini-4k-instruct.json"


def _common(**overrides):
    return generic_configs(**{**hc.PLAIN, "rotary_fractions": ("full", "partial"), "windows": ("none", "uniform"),
                              **overrides})


def native_configs() -> st.SearchStrategy[native.ModelConfig]:
    """Configs the converter must accept: default rope with any ``head_dim``, LongRoPE with
    ``head_dim * heads == hidden`` (Phi3Config sizes the factor lists by ``hidden // heads``);
    token ids inside the vocabulary (Phi-3's default 32000 would not be)."""
    return hc.with_token_ids(st.one_of(
        _common(rotary_kinds=("default",)),
        _common(rotary_kinds=("longrope",), hidden="heads_times_head_dim"),
    ))


@st.composite
def _rope(draw, head_dim: int, max_position: int, longrope: bool):
    """(v5 ``rope_parameters``, an ``original_max_position_embeddings``); LongRoPE only if allowed."""
    fraction = draw(bb.rotary_fractions(head_dim))
    params = {"rope_type": "default", "rope_theta": draw(bb.thetas()), "partial_rotary_factor": fraction}
    original = draw(bb.originals(max_position))
    if longrope and draw(st.booleans()):
        n = int(head_dim * fraction) // 2
        factors = st.lists(bb.positive_floats(0.5, 16.0), min_size=n, max_size=n)
        params.update(rope_type="longrope", short_factor=draw(factors), long_factor=draw(factors),
                      original_max_position_embeddings=original)
        params.update(draw(hc.optional_keys({"factor": bb.scale_factors(True),
                                             "attention_factor": bb.positive_floats(0.5, 2.0)})))
        if "factor" not in params:  # without it transformers warns; real long-context configs omit it
            params["factor"] = max_position / original
    return params, original


@st.composite
def hf_configs(draw):
    """Phi3Config dicts in the v5 form and in the v4 form (``rope_theta``/``rope_scaling``, a
    top-level ``partial_rotary_factor`` as Phi-4-mini writes it), with the keys real configs carry."""
    hf, layout = draw(hc.hf_sizes(MODEL_TYPE, hidden=("free", "heads_times_head_dim")))
    longrope_shape = hf["hidden_size"] == layout.heads * layout.head_dim  # LongRoPE's factor lists fit
    max_position = hf["max_position_embeddings"]
    hf.update({
        "hidden_act": draw(bb.choice(("silu", "gelu", "gelu_pytorch_tanh", "relu"))),
        "rms_norm_eps": draw(bb.epsilons()),
        "tie_word_embeddings": draw(st.booleans()),
        "sliding_window": draw(st.one_of(st.none(), bb.windows())),
        **draw(hc.token_ids(hf["vocab_size"])),
    })
    params, original = draw(_rope(layout.head_dim, max_position, longrope=longrope_shape))
    hf["rope_parameters"] = params
    if params["rope_type"] == "longrope" or draw(st.booleans()):
        hf["original_max_position_embeddings"] = original  # Phi3Config writes it always
    hf.update(draw(hc.optional_keys({
        "resid_pdrop": hc.dropouts(), "embd_pdrop": hc.dropouts(), "attention_dropout": hc.dropouts(),
        "initializer_range": st.sampled_from([0.02, 0.01]), "use_cache": st.booleans(),
        "attention_bias": st.just(False)})))
    hf.update(draw(hc.file_keys(ARCHITECTURE)))
    if draw(st.booleans()):  # v4: both keys top-level, the rest in rope_scaling
        fraction = params.pop("partial_rotary_factor")
        params.pop("original_max_position_embeddings", None)
        hf.update(draw(hc.v4_rope_keys(hf.pop("rope_parameters"), default_scaling=("null",))))
        if fraction != 1.0 or draw(st.booleans()):
            hf["partial_rotary_factor"] = fraction
    return hf


def hf_examples() -> list[dict]:
    """Explicit examples: the real Phi-3-mini config, verbatim (config properties) and scaled down
    to a forward-sized model with its keys kept."""
    real = hc.real_config(REAL)
    small = hc.scaled_down(real, vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
                           original_max_position_embeddings=32, sliding_window=7,
                           bos_token_id=1, eos_token_id=60, pad_token_id=60)
    longrope = hc.scaled_down(small, max_position_embeddings=64, original_max_position_embeddings=8,
                              rope_scaling={"type": "longrope", "short_factor": [1.0, 1.25, 1.5],
                                            "long_factor": [2.0, 4.0, 8.0], "factor": 8.0})
    return [real, small, longrope]


#: Mutations every Phi-3 config refuses (see strategies._mutations.MUTATIONS).
REFUSED = ("q_bias_flip", "o_bias_flip", "qk_norm", "mlp_gated_flip", "mlp_bias_flip", "norm_kind",
           "final_norm_eps", "placement", "no_rotary", "window_pattern", "multiplier", "final_softcap",
           "logit_softcap", "softmax_scale", "moe")


@st.composite
def _longrope_head_dim(draw):
    """LongRoPE with ``head_dim * heads != hidden``: Phi3Config sizes the factor lists by
    ``hidden // heads``, the model rotates ``head_dim`` dims."""
    cfg = draw(native_configs())
    a = cfg.decoder.blocks[0].attention
    n = a.rotary.rotary_dim(a.head_dim) // 2
    rotary = native.LongRopeRotary(theta=10000.0, fraction=a.rotary.fraction, short_factor=(1.0,) * n,
                                   long_factor=(2.0,) * n, original_max_position_embeddings=4, factor=2.0)
    return dataclasses.replace(mu.every_attention(cfg, rotary=rotary),
                               hidden_size=a.heads * a.head_dim + draw(st.integers(1, 3))), "head_dim"


def unrepresentable_configs() -> st.SearchStrategy[tuple[native.ModelConfig, str]]:
    """``(cfg, field)``: a config Phi-3 cannot express, and the text the refusal must contain. One
    feature of an accepted config changed (a bias, a q/k norm, a plain or biased MLP, LayerNorm,
    another placement, no rotary, per-layer windows, two norm epsilons, an embedding multiplier,
    softcaps, a softmax scale, MoE), or LongRoPE with a free ``head_dim``."""
    return st.one_of(mu.unrepresentable(native_configs(), REFUSED), _longrope_head_dim())


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
