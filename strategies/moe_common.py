"""Pieces shared by the MoE strategies (mixtral, qwen2_moe, qwen3_moe; the DeepSeek ones draw their
refusals with :func:`broken` too).

HF side: :func:`hf_base`, the keys the MoE classes share beyond the sizes (``_hf_common`` holds the
pieces every architecture uses). Everything is small (hidden <= 48, <= 3 layers, <= 6 experts,
vocab <= 97).

Native side: :data:`COMMON_BREAKERS`, single changes no MoE format here can express, keyed by the
field the refusal must name (the per-architecture modules add their own, from :mod:`strategies._mutations`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import building_blocks as bb
from ._mutations import at_least_layers, mutate_attention, mutate_block, partial_rotary


@st.composite
def hf_base(draw, model_type: str, architecture: str, *, null_head_dim: bool = False,
            longrope_head_dim: bool = False, training: Sequence[str] = ("output_router_logits", "router_aux_loss_coef")
            ) -> dict[str, Any]:
    """Sizes (``intermediate_size`` for the dense MLPs), norms, activation, rope and carried keys
    common to the MoE classes. ``longrope_head_dim``: ``head_dim`` spelled out with LongRoPE (the
    class's longrope validation needs it); ``training``: the router keys it carries."""
    hf, layout = draw(hc.hf_sizes(model_type, hidden=("free", "heads_times_head_dim"), hidden_at_least_heads=True,
                                  intermediate=bb.intermediate_sizes(32),
                                  head_dim="any_or_null" if null_head_dim else "any"))
    hf.update(rms_norm_eps=draw(bb.epsilons()), tie_word_embeddings=draw(st.booleans()),
              hidden_act=draw(st.sampled_from(sorted(hc.ACTIVATIONS.values()))))
    params = draw(hc.rope_parameters(layout.head_dim, hf["max_position_embeddings"]))
    if longrope_head_dim and params["rope_type"] == "longrope":
        hf["head_dim"] = layout.head_dim
    hf.update(draw(hc.rope_keys(params)))
    hf.update(draw(hc.token_and_training_keys(hf["vocab_size"], training)))
    hf.update(draw(hc.file_keys(architecture, **hc.LATER_FILES)))
    return hf


# ------------------------------------------------------------------------------------ breakers
# Unrepresentable configs are drawn field first (uniformly over a fixed list of breakers), then a
# layer the breaker applies to; a breaker that needs a layer the config lacks (a second layer, a
# sparse or a dense one) makes one. So every refusal is reached about equally often.

def second_layer(mutate):
    """A breaker making layer 1 (added when missing) differ from layer 0: ``mutate(cfg, draw)``."""
    def breaker(cfg, i, draw):
        return mutate(at_least_layers(cfg, 2), draw)
    return breaker


def two_windows(cfg: native.ModelConfig, draw) -> native.ModelConfig:
    """Layers 0 and 1 with two window sizes."""
    window = draw(bb.windows())
    return mutate_attention(mutate_attention(cfg, 0, window=window), 1, window=window + 1)


#: breakers every MoE format here refuses: ``(cfg, layer, draw) -> cfg``
COMMON_BREAKERS = {
    "placement": lambda cfg, i, draw: mutate_block(cfg, i, placement=draw(st.sampled_from(("post", "sandwich", "parallel")))),
    "softmax_scale": lambda cfg, i, draw: mutate_attention(cfg, i, softmax_scale=draw(bb.positive_floats(0.05, 1.0))),
    "logit_softcap": lambda cfg, i, draw: mutate_attention(cfg, i, logit_softcap=draw(bb.positive_floats(0.5, 60.0))),
    "rotary": lambda cfg, i, draw: mutate_attention(cfg, i, rotary=native.NoRotary()),
    "fraction": lambda cfg, i, draw: partial_rotary(cfg),
    "multiplier": lambda cfg, i, draw: dataclasses.replace(
        cfg, embeddings=dataclasses.replace(cfg.embeddings, multiplier=draw(bb.positive_floats(0.5, 10.0)))),
    "final_softcap": lambda cfg, i, draw: dataclasses.replace(
        cfg, head=dataclasses.replace(cfg.head, final_softcap=draw(bb.positive_floats(0.5, 60.0)))),
    "norm": lambda cfg, i, draw: mutate_block(cfg, i, norm=native.LayerNormConfig(eps=cfg.decoder.layer(i).norm.eps)),
}


@st.composite
def broken(draw, configs: st.SearchStrategy, breakers: dict) -> tuple[native.ModelConfig, str]:
    """``(cfg, field)``: a drawn config broken by one drawn breaker (``breakers[field](cfg, layer,
    draw)``), the field the refusal must name."""
    cfg = draw(configs)
    field = draw(st.sampled_from(sorted(breakers)))
    layer = draw(st.integers(0, cfg.num_layers - 1))
    return breakers[field](cfg, layer, draw), field
