"""``native_configs(**constraints)``: any native config, or the subset an architecture can express.

With no arguments it covers every feature the native model supports: all placements, norm kinds,
q/k-norm scopes, the 16 q/k/v/o bias patterns, all seven rotary kinds with full and partial
rotation, dense and MoE feed-forwards (with shared experts), windows on all or some layers, two
block kinds per model differing in window, rotary, feed-forward, head shape or entirely, tied and
untied heads, embedding multipliers, softmax scales and both softcaps. It is used to fuzz the native
model itself and as the basis of the per-architecture strategies, which pass narrower choices.

Every keyword is a tuple of allowed choices, simplest first (see ``building_blocks`` for the names);
a one-element tuple fixes the feature.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from hypothesis import strategies as st

import native
from native.config import PLACEMENTS
from native.feedforward_config import ACTIVATIONS

from . import building_blocks as bb

#: Features that may differ between the two block kinds of a model (layers flagged by the layer
#: pattern get the variant block). "block" redraws the whole block (head shape included only with
#: "attention_shape"). Windows follow the pattern through ``windows=("patterned",)`` instead.
VARYING = ("rotary", "feed_forward", "attention_shape", "block")


@st.composite
def native_configs(
    draw,
    *,
    min_layers: int = 1,
    max_layers: int = bb.MAX_LAYERS,
    hidden: str = "free",
    min_hidden: int = bb.MIN_HIDDEN,
    max_hidden: int = bb.MAX_HIDDEN,
    min_vocab: int = bb.MIN_VOCAB,
    max_vocab: int = bb.MAX_VOCAB,
    max_kv_heads: int = bb.MAX_KV_HEADS,
    max_group: int = bb.MAX_GROUP,
    max_head_dim: int = bb.MAX_HEAD_DIM,
    placements: Sequence[str] = PLACEMENTS,
    norm_kinds: Sequence[str] = bb.NORM_KINDS,
    shared_eps: bool = False,
    final_norm: str = "any",
    qk_norms: Sequence[str] = bb.QK_NORMS,
    qk_norm_kinds: Sequence[str] | None = None,
    rotary_kinds: Sequence[str] = bb.ROTARY_KINDS,
    rotary_fractions: Sequence[str] = bb.ROTARY_FRACTIONS,
    hf_valid_rotary: bool = False,
    attention_biases: Sequence[bb.BiasPattern] = bb.BIAS_ANY,
    mlp_biases: Sequence[bool] = (False, True),
    feed_forwards: Sequence[str] = bb.FEED_FORWARDS,
    gated: Sequence[bool] = (True, False),
    activations: Sequence[str] = ACTIVATIONS,
    moe_shared: Sequence[bool] = (False, True),
    moe_shared_gate: Sequence[bool] = (False, True),
    moe_normalize: Sequence[bool] = (True, False),
    windows: Sequence[str] = bb.WINDOW_MODES,
    layer_patterns: Sequence[str] = bb.LAYER_PATTERN_KINDS,
    varying: Sequence[str] = VARYING,
    tied: Sequence[bool] = (False, True),
    embedding_multipliers: Sequence[str] = bb.MULTIPLIERS,
    softmax_scales: Sequence[str] = bb.OPTIONAL,
    attention_softcaps: Sequence[str] = bb.OPTIONAL,
    final_softcaps: Sequence[str] = bb.OPTIONAL,
) -> native.ModelConfig:
    """A valid ``native.ModelConfig`` within the given choices.

    - ``hidden``: ``"free"``, ``"multiple_of_heads"`` (HF Llama validates it) or
      ``"heads_times_head_dim"`` (architectures without a ``head_dim`` key).
    - ``shared_eps``: one epsilon for every norm (HF configs have a single ``rms_norm_eps``).
    - ``final_norm``: ``"same"`` (the final norm is the first block's norm) or ``"any"``.
    - ``qk_norms``: ``"none"``, ``"head"`` (per head: Qwen3, Gemma3) or ``"full"`` (whole projection:
      OLMo2); ``qk_norm_kinds`` defaults to ``norm_kinds``.
    - ``hf_valid_rotary``: rotary parameters transformers accepts without a warning.
    - ``windows``: ``"none"``; ``"uniform"`` (every layer the same window); ``"patterned"`` (the
      layers the layer pattern flags get the window, the others none).
    - ``layer_patterns``: pattern kinds (building_blocks.LAYER_PATTERN_KINDS) choosing which layers
      are the variant kind; ``varying``: what the variant differs in (see :data:`VARYING`).
    - ``embedding_multipliers``: ``"none"``, ``"sqrt_hidden"`` (Gemma) or ``"any"`` positive value.
    - ``softmax_scales``/``attention_softcaps``/``final_softcaps``: ``"none"`` (no explicit scale,
      no cap) or ``"any"``.
    """
    for name, value, allowed in (("hidden", hidden, bb.HIDDEN_POLICIES), ("final_norm", final_norm, ("same", "any"))):
        if value not in allowed:
            raise ValueError(f"native_configs({name}={value!r}): choose from {allowed}")
    unknown = set(varying) - set(VARYING)
    if unknown:
        raise ValueError(f"native_configs(varying=...): unknown feature(s) {sorted(unknown)}; choose from {VARYING}")

    # Sizes and the shared head layout first: everything below depends on them.
    num_layers = draw(bb.layer_counts(min_layers, max_layers))
    even_head_dim = "partial" not in rotary_fractions and set(rotary_kinds) != {"none"}
    min_head_dim = bb.MIN_HEAD_DIM if "full" in rotary_fractions or set(rotary_kinds) == {"none"} else 3
    layout_strategy = bb.head_layouts(
        max_kv_heads=max_kv_heads, max_group=max_group, even_head_dim=even_head_dim,
        min_head_dim=min_head_dim, max_head_dim=max_head_dim,
        max_q_width=max_hidden if hidden == "heads_times_head_dim" else None)
    layout = draw(layout_strategy)
    hidden_size = draw(bb.hidden_for(layout, hidden, min_value=min_hidden, max_value=max_hidden))
    vocab_size = draw(bb.vocab_sizes(min_vocab, max_vocab))
    max_position = draw(bb.max_positions())
    eps = draw(bb.epsilons()) if shared_eps else None

    def block(draw, layout: bb.HeadLayout) -> native.BlockConfig:
        placement = draw(bb.choice(tuple(placements)))
        norm = draw(bb.norms(norm_kinds, eps))
        biases = draw(bb.bias_patterns(attention_biases))
        qk_mode = draw(bb.choice(tuple(qk_norms)))
        qk_norm = None if qk_mode == "none" else draw(bb.norms(qk_norm_kinds or norm_kinds, eps))
        scale_mode = draw(bb.choice(tuple(softmax_scales)))
        scale = None if scale_mode == "none" else draw(bb.positive_floats(0.05, 1.0))
        cap_mode = draw(bb.choice(tuple(attention_softcaps)))
        softcap = None if cap_mode == "none" else draw(bb.positive_floats(0.5, 60.0, first=50.0))
        attention = native.AttentionConfig(
            heads=layout.heads, kv_heads=layout.kv_heads, head_dim=layout.head_dim, **biases.as_kwargs(),
            qk_norm=qk_norm, qk_norm_scope="head" if qk_mode == "none" else qk_mode,
            softmax_scale=scale, logit_softcap=softcap, window=None, rotary=draw(rotary(layout)))
        return native.BlockConfig(placement=placement, norm=norm, attention=attention, mlp=feed_forward(draw))

    def rotary(layout: bb.HeadLayout):
        return bb.rotaries(layout.head_dim, max_position, kinds=rotary_kinds, fractions=rotary_fractions,
                           hf_valid=hf_valid_rotary)

    def feed_forward(draw):
        if draw(bb.choice(tuple(feed_forwards))) == "mlp":
            return draw(bb.mlps(activation_choices=activations, gated=gated, biases=mlp_biases))
        return draw(bb.moes(activation_choices=activations, shared=moe_shared, shared_gate=moe_shared_gate,
                            normalize=moe_normalize))

    base = block(draw, layout)
    pattern = draw(bb.layer_patterns(num_layers, layer_patterns))
    variant = base
    if any(pattern.flags) and varying:
        variant_layout = layout
        if "attention_shape" in varying and hidden == "free":
            variant_layout = draw(layout_strategy)
        if "block" in varying:
            variant = block(draw, variant_layout)
        else:
            attention = base.attention
            if variant_layout != layout:
                attention = dataclasses.replace(attention, heads=variant_layout.heads,
                                                kv_heads=variant_layout.kv_heads, head_dim=variant_layout.head_dim,
                                                rotary=native.NoRotary())
            if "rotary" in varying or variant_layout != layout:
                attention = dataclasses.replace(attention, rotary=draw(rotary(variant_layout)))
            mlp = feed_forward(draw) if "feed_forward" in varying else base.mlp
            variant = dataclasses.replace(base, attention=attention, mlp=mlp)

    window_mode = draw(bb.choice(tuple(windows)))
    window = None if window_mode == "none" else draw(bb.windows())
    layers = []
    for flagged in pattern.flags:
        layer = variant if flagged else base
        sliding = window_mode == "uniform" or (window_mode == "patterned" and flagged)
        if sliding:
            layer = dataclasses.replace(layer, attention=dataclasses.replace(layer.attention, window=window))
        layers.append(layer)

    final = base.norm if final_norm == "same" else draw(bb.norms(norm_kinds, eps))
    multiplier_mode = draw(bb.choice(tuple(embedding_multipliers)))
    multiplier = {
        "none": lambda: None,
        "sqrt_hidden": lambda: native.config.default_embedding_multiplier(hidden_size),
        "any": lambda: draw(bb.positive_floats(0.5, 10.0)),
    }[multiplier_mode]()
    is_tied = draw(bb.choice(tuple(tied)))
    final_cap_mode = draw(bb.choice(tuple(final_softcaps)))
    final_cap = None if final_cap_mode == "none" else draw(bb.positive_floats(0.5, 60.0, first=30.0))
    return native.ModelConfig(
        hidden_size=hidden_size,
        max_position_embeddings=max_position,
        embeddings=native.EmbeddingConfig(vocab_size=vocab_size, multiplier=multiplier),
        decoder=native.DecoderConfig.from_layers(layers),
        final_norm=final,
        head=native.HeadConfig(tied=is_tied, final_softcap=final_cap),
    )
