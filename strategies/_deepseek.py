"""Pieces shared by the ``deepseek_v2`` and ``deepseek_v3`` strategies.

Native configs are built directly (the generic strategy knows neither MLA nor DeepSeekMoE): MLA
sizes drawn independently (nope, rope, v and both ranks differ), ``hidden`` a multiple of the heads
(DeepseekV2Config validates it, and convcheck's own reader wants it without a ``head_dim``),
dense layers then MoE layers in any split (all dense and all MoE included), experts split into
groups with every legal ``top_groups``/``top_k``. HF dicts are written here again from the
transformers config classes, independently of the converters. Everything is small: hidden <= 48,
<= 3 layers, <= 8 experts, vocab <= 97.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb

MAX_EXPERTS = 8


#: DeepseekV2 rotates its rope parts with ``view_as_complex`` on views of the projections, which in
#: float32 needs an even ``qk_nope_head_dim`` and ``kv_lora_rank`` (even strides and offsets)
EVEN_V2 = {"deepseek_v2"}


def _sizes(draw, even: bool) -> tuple[int, int]:
    """``(qk_nope_head_dim, kv_lora_rank)``."""
    if even:
        return 2 * draw(st.integers(1, 4)), 2 * draw(st.integers(1, 8))
    return draw(st.integers(1, 8)), draw(st.integers(1, 16))


@st.composite
def mla(draw, hidden_heads: int | None = None, q_lora: bool = True, max_position: int = 64,
        even: bool = False) -> native.MLAConfig:
    heads = hidden_heads or draw(st.integers(1, 4))
    nope, kv_rank = _sizes(draw, even)
    rope = draw(st.sampled_from((2, 4, 6, 8)))
    rotary = draw(hc.rotary_for(rope, max_position))
    return native.MLAConfig(
        heads=heads,
        q_lora_rank=draw(st.one_of(st.none(), st.integers(1, 16))) if q_lora else None,
        kv_lora_rank=kv_rank,
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=draw(st.integers(1, 8)),
        bias=draw(st.booleans()),
        rotary=rotary,
    )


@st.composite
def groups_and_top_k(draw, *, min_per_group: int, grouped: bool) -> dict[str, int]:
    """``experts``, ``groups``, ``top_groups``, ``top_k`` with ``top_k < experts`` (so that every
    routing choice, the score bias included, can matter) and ``top_k`` within the top groups."""
    groups = draw(st.sampled_from((1, 2, 4))) if grouped else 1
    per_group = draw(st.integers(max(min_per_group, 1 if groups > 1 else 2), max(2, MAX_EXPERTS // groups)))
    experts = groups * per_group
    top_groups = draw(st.integers(1, groups))
    top_k = draw(st.integers(1, min(top_groups * per_group, experts - 1)))
    return {"experts": experts, "groups": groups, "top_groups": top_groups, "top_k": top_k}


@st.composite
def native_configs(draw, moe_kind, even: bool = False) -> native.ModelConfig:
    """``moe_kind(draw, activation)`` draws the version's ``DeepSeekMoEConfig``."""
    num_layers = draw(bb.layer_counts())
    max_position = draw(bb.max_positions())
    attention = draw(mla(max_position=max_position, even=even))
    hidden = attention.heads * draw(st.integers(max(1, -(-bb.MIN_HIDDEN // attention.heads)), bb.MAX_HIDDEN // attention.heads))
    eps = draw(bb.epsilons())
    activation = draw(st.sampled_from(sorted(hc.ACTIVATIONS)))
    first_dense = draw(st.integers(0, num_layers))
    dense = native.MLPConfig(intermediate=draw(bb.intermediate_sizes(32)), activation=activation)
    moe = moe_kind(draw, activation)
    norm = native.RMSNormConfig(eps=eps)
    layers = [native.BlockConfig(norm=norm, attention=attention, mlp=dense if i < first_dense else moe)
              for i in range(num_layers)]
    return native.ModelConfig(
        hidden_size=hidden, max_position_embeddings=max_position,
        embeddings=native.EmbeddingConfig(vocab_size=draw(bb.vocab_sizes())),
        decoder=native.DecoderConfig.from_layers(layers), final_norm=norm,
        head=native.HeadConfig(tied=draw(st.booleans())))


# ------------------------------------------------------------------------------------- HF side
@st.composite
def hf_base(draw, model_type: str, architecture: str, *, q_lora: bool = True) -> dict[str, Any]:
    """The keys both versions share: sizes, MLA, dense/MoE split, rope (v4 or v5), tokens, file keys."""
    heads = draw(st.integers(1, 4))
    rope = draw(st.sampled_from((2, 4, 6, 8)))
    vocab = draw(bb.vocab_sizes())
    max_position = draw(bb.max_positions())
    num_layers = draw(bb.layer_counts())
    nope, kv_rank = _sizes(draw, model_type in EVEN_V2)
    hf: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": heads * draw(st.integers(max(1, -(-bb.MIN_HIDDEN // heads)), bb.MAX_HIDDEN // heads)),
        "num_attention_heads": heads,
        "q_lora_rank": draw(st.one_of(st.none(), st.integers(1, 16))) if q_lora else None,
        "kv_lora_rank": kv_rank,
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": draw(st.integers(1, 8)),
        "attention_bias": draw(st.booleans()),
        "num_hidden_layers": num_layers,
        "first_k_dense_replace": draw(st.integers(0, num_layers)),
        "intermediate_size": draw(bb.intermediate_sizes(32)),
        "moe_intermediate_size": draw(bb.intermediate_sizes(16)),
        "n_shared_experts": draw(st.integers(1, 2)),
        "vocab_size": vocab,
        "max_position_embeddings": max_position,
        "rms_norm_eps": draw(bb.epsilons()),
        "tie_word_embeddings": draw(st.booleans()),
        "hidden_act": draw(st.sampled_from(sorted(hc.ACTIVATIONS.values()))),
    }
    if model_type != "deepseek_v3" and draw(st.booleans()):
        pass  # DeepseekV2Config defaults it to the head count
    else:  # DeepseekV3Config's default (128) only fits 128 heads
        hf["num_key_value_heads"] = heads
    if draw(st.booleans()):
        hf["moe_layer_freq"] = 1
    params = draw(hc.rope_parameters(rope, max_position))
    if params.get("truncate"):  # as DeepSeek configs write YaRN: truncate only when false
        del params["truncate"]
    hf.update(draw(hc.rope_keys(params)))
    hf.update(draw(hc.token_and_training_keys(vocab, ("output_router_logits",))))
    hf.update(draw(hc.file_keys(architecture, **hc.LATER_FILES)))
    if draw(st.booleans()):
        hf["ep_size"] = 1
    return hf


def with_groups(hf: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    return {**hf, "n_routed_experts": sizes["experts"], "num_experts_per_tok": sizes["top_k"]}


# ------------------------------------------------------------------------------- refusals
def moe_layer(cfg: native.ModelConfig, make) -> tuple[native.ModelConfig, int]:
    """``cfg`` with a MoE last layer (``make(cfg)`` when it is dense) and that layer's index."""
    last = cfg.num_layers - 1
    if not isinstance(cfg.decoder.layer(last).mlp, native.DeepSeekMoEConfig):
        cfg = mu.mutate_block(cfg, last, mlp=make(cfg))
    return cfg, last


def dense_layer(cfg: native.ModelConfig) -> tuple[native.ModelConfig, int]:
    """``cfg`` with a dense first layer and its index 0."""
    if not isinstance(cfg.decoder.layer(0).mlp, native.MLPConfig):
        act = cfg.decoder.layer(0).mlp.activation
        cfg = mu.mutate_block(cfg, 0, mlp=native.MLPConfig(intermediate=8, activation=act))
    return cfg, 0


def moe_breaker(make, fresh: bool = False, **changes):
    """A MoE last layer with ``changes``; ``fresh`` starts from ``make(cfg)`` rather than the drawn
    layer, for changes that the drawn sizes may not admit (``top2_sum`` needs 2 experts per group)."""
    def breaker(cfg, i, draw):
        cfg, last = moe_layer(cfg, make)
        if fresh:
            cfg = mu.mutate_block(cfg, last, mlp=make(cfg))
        return mu.mutate_mlp(cfg, last, **changes)

    return breaker


def common_breakers(make) -> dict:
    """Changes neither version can express, keyed by the field the refusal must name."""

    def plain_attention(cfg, i, draw):
        return mu.mutate_block(cfg, i, attention=native.AttentionConfig(heads=2, kv_heads=2, head_dim=4))

    def other_activation(cfg, i, draw):
        cfg = mu.at_least_layers(cfg, 2)
        return mu.mutate_mlp(cfg, 1, activation=mu.other_activation(cfg.decoder.layer(1).mlp.activation))

    def ungated(cfg, i, draw):
        cfg, j = dense_layer(cfg)
        return mu.mutate_mlp(cfg, j, gated=False)

    def old_moe(cfg, i, draw):
        cfg, last = moe_layer(cfg, make)
        return mu.mutate_block(cfg, last, mlp=native.MoEConfig(experts=4, top_k=2, intermediate=8))

    return {
        "placement": lambda cfg, i, draw: mu.mutate_block(cfg, i, placement=draw(st.sampled_from(("post", "sandwich", "parallel")))),
        "norm": lambda cfg, i, draw: mu.mutate_block(cfg, i, norm=native.LayerNormConfig(eps=cfg.decoder.layer(i).norm.eps)),
        "attention.kind": plain_attention,
        "lora_norm_eps": lambda cfg, i, draw: mu.mutate_attention(cfg, i, lora_norm_eps=1e-5),
        "activation": other_activation,
        "gated": ungated,
        "mlp.kind": old_moe,
        "mlp": lambda cfg, i, draw: _moe_before_dense(cfg, make),
        "shared_experts": moe_breaker(make, shared_experts=0),
    }


def _moe_before_dense(cfg: native.ModelConfig, make) -> native.ModelConfig:
    """A MoE layer 0 followed by a dense layer 1: dense layers must come first."""
    cfg = mu.at_least_layers(cfg, 2)
    act = cfg.decoder.layer(0).mlp.activation
    moe = make(cfg)
    moe = dataclasses.replace(moe, activation=act)
    cfg = mu.mutate_block(cfg, 0, mlp=moe)
    return mu.mutate_block(cfg, 1, mlp=native.MLPConfig(intermediate=8, activation=act))


#: The sizes :func:`scaled_down` gives a real config (small enough for weights and a forward pass).
SMALL = dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=12, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3,
             kv_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=6, v_head_dim=5, first_k_dense_replace=1,
             vocab_size=97, max_position_embeddings=64)


def scaled_down(real: dict[str, Any], **sizes: Any) -> dict[str, Any]:
    """A real config at test size (:data:`SMALL`, then ``sizes``), its rope's original context cut so
    a short forward passes it."""
    out = hc.scaled_down(real, **{**SMALL, **sizes})
    rope = out.get("rope_scaling")
    if isinstance(rope, dict) and "original_max_position_embeddings" in rope:
        rope["original_max_position_embeddings"] = 16
        rope["factor"] = out["max_position_embeddings"] / 16
    return out
