"""Strategies for the ``mixtral`` converter.

- :func:`native_configs`: what MixtralForCausalLM can express: pre-norm RMSNorm blocks with one
  epsilon, no biases, no q/k norm, full rotary of any HF kind, every layer the same sparse MoE
  (renormalised top-k, no shared expert), one sliding window for all layers or none, tied or not.
- :func:`hf_configs`: MixtralConfig dicts in v4 and v5 rope forms, with ``num_experts`` or
  ``num_local_experts``, ``head_dim`` explicit, null or absent, and the carried keys.
- :func:`unrepresentable_configs`: ``(cfg, field)``, one inexpressible feature each.
- :func:`hf_examples`: the transformers default and the real Mixtral-8x7B config (as is and scaled
  down), for ``@example``.
"""
from __future__ import annotations

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from . import moe_common as mc
from .generic import native_configs as generic_configs

MODEL_TYPE = "mixtral"
ARCHITECTURE = "MixtralForCausalLM"
REAL_CONFIG = "mistralai__Mixtral-8x7B-v0.1.json"


def native_configs():
    return generic_configs(**{
        **hc.PLAIN, "feed_forwards": ("moe",), "moe_shared": (False,), "moe_shared_gate": (False,),
        "moe_normalize": (True,), "windows": ("none", "uniform")}).map(hc.hf_buildable)


@st.composite
def hf_configs(draw) -> dict:
    hf = draw(mc.hf_base(MODEL_TYPE, ARCHITECTURE, null_head_dim=True, longrope_head_dim=True,
                         training=("output_router_logits", "router_aux_loss_coef", "router_jitter_noise")))
    experts = draw(st.integers(1, bb.MAX_EXPERTS))
    hf[draw(st.sampled_from(("num_local_experts", "num_experts")))] = experts
    hf["num_experts_per_tok"] = draw(st.integers(1, experts))
    hf["sliding_window"] = draw(st.one_of(st.none(), bb.windows()))
    return hf


def _other_experts(cfg, draw):
    return mu.mutate_mlp(cfg, 1, experts=cfg.decoder.layer(1).mlp.experts + 1)


#: field → breaker (see strategies.moe_common.broken)
BREAKERS = {
    **mc.COMMON_BREAKERS,
    "qk_norm": lambda cfg, i, draw: mu.mutate_attention(cfg, i, qk_norm=native.RMSNormConfig(eps=1e-6)),
    "q_bias": lambda cfg, i, draw: mu.mutate_attention(cfg, i, q_bias=True),
    "o_bias": lambda cfg, i, draw: mu.mutate_attention(cfg, i, o_bias=True),
    "mlp.kind": lambda cfg, i, draw: mu.mutate_block(cfg, i, mlp=native.MLPConfig(
        intermediate=cfg.decoder.layer(i).mlp.intermediate, activation=cfg.decoder.layer(i).mlp.activation)),
    "normalize_top_k": lambda cfg, i, draw: mu.mutate_mlp(cfg, i, normalize_top_k=False),
    "shared_intermediate": lambda cfg, i, draw: mu.mutate_mlp(cfg, i, shared_intermediate=draw(bb.intermediate_sizes(32))),
    "attention.window": mc.second_layer(mc.two_windows),
    "experts": mc.second_layer(_other_experts),
}


def unrepresentable_configs():
    """``(cfg, field)``: ``export_config(cfg)`` must raise ConversionError naming ``field``."""
    return mc.broken(native_configs(), BREAKERS)


def hf_examples() -> list[dict]:
    """For ``@example``: the transformers default (a 47B model: config properties only), the real
    Mixtral-8x7B config, and the real config scaled down (small enough for weights and forward)."""
    from transformers import AutoConfig

    real = hc.real_config(REAL_CONFIG)
    return [AutoConfig.for_model(MODEL_TYPE).to_dict(), real,
            hc.scaled_down(real, hidden_size=32, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=2, num_local_experts=4, vocab_size=97, max_position_embeddings=64)]


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
