"""Strategies for the ``mixtral`` converter.

- :func:`native_configs`: what MixtralForCausalLM can express: pre-norm RMSNorm blocks with one
  epsilon, no biases, no q/k norm, full rotary of any HF kind, every layer the same sparse MoE
  (renormalised top-k, no shared expert), one sliding window for all layers or none, tied or not.
- :func:`hf_configs`: MixtralConfig dicts in v4 and v5 rope forms, with ``num_experts`` or
  ``num_local_experts``, ``head_dim`` explicit, null or absent, and the carried keys.
- :func:`unrepresentable_configs`: ``(field, cfg)``, one inexpressible feature each.
- :func:`hf_examples`: the transformers default and the real Mixtral-8x7B config (as is and scaled
  down), for ``@example``.
"""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st

import native

from . import building_blocks as bb
from . import moe_common as mc
from .generic import native_configs as generic_configs

MODEL_TYPE = "mixtral"
ARCHITECTURE = "MixtralForCausalLM"

from .paths import REAL_CONFIGS as _REAL  # noqa: E402
REAL_CONFIG = _REAL / "mistralai__Mixtral-8x7B-v0.1.json"


def _real() -> dict | None:
    try:
        return json.loads(REAL_CONFIG.read_text())
    except OSError:
        return None


def native_configs():
    return generic_configs(
        placements=("pre",), norm_kinds=("rms",), shared_eps=True, final_norm="same", qk_norms=("none",),
        rotary_kinds=mc.ROPE_KINDS, rotary_fractions=("full",), hf_valid_rotary=True,
        attention_biases=bb.BIAS_NONE, feed_forwards=("moe",), moe_shared=(False,), moe_shared_gate=(False,),
        moe_normalize=(True,), windows=("none", "uniform"), layer_patterns=("uniform",), varying=(),
        embedding_multipliers=("none",), softmax_scales=("none",), attention_softcaps=("none",),
        final_softcaps=("none",)).map(mc.hf_buildable)


@st.composite
def hf_configs(draw) -> dict:
    sizes = draw(mc.attention_sizes())
    vocab = draw(bb.vocab_sizes())
    max_position = draw(bb.max_positions())
    hf = {"model_type": MODEL_TYPE, **{k: v for k, v in sizes.items() if k != "head_dim"}}
    hf.update(draw(mc.head_dim_keys(sizes, null_allowed=True)))
    experts = draw(st.integers(1, bb.MAX_EXPERTS))
    hf[draw(st.sampled_from(("num_local_experts", "num_experts")))] = experts
    hf.update(
        num_experts_per_tok=draw(st.integers(1, experts)),
        intermediate_size=draw(bb.intermediate_sizes(32)),
        num_hidden_layers=draw(bb.layer_counts()),
        vocab_size=vocab,
        max_position_embeddings=max_position,
        rms_norm_eps=draw(bb.epsilons()),
        tie_word_embeddings=draw(st.booleans()),
        hidden_act=draw(st.sampled_from(sorted(mc.ACTIVATIONS.values()))),
        sliding_window=draw(st.one_of(st.none(), bb.windows())),
    )
    rotary = draw(mc.rotary_for(mc.head_dim_of(hf), max_position))
    if rotary.kind == "longrope":  # MixtralConfig's longrope validation needs head_dim spelled out
        hf["head_dim"] = mc.head_dim_of(hf)
    hf.update(draw(mc.rope_keys(rotary)))
    hf.update(draw(mc.token_and_training_keys(vocab, ("output_router_logits", "router_aux_loss_coef",
                                                         "router_jitter_noise"))))
    hf.update(draw(mc.file_keys(ARCHITECTURE)))
    return hf


def _two_windows(cfg, i, draw):
    cfg = mc.at_least_layers(cfg, 2)
    window = draw(bb.windows())
    return mc.mutate_attention(mc.mutate_attention(cfg, 0, window=window), 1, window=window + 1)


def _other_experts(cfg, i, draw):
    cfg = mc.at_least_layers(cfg, 2)
    return mc.mutate_mlp(cfg, 1, experts=cfg.decoder.layer(1).mlp.experts + 1)


#: field → breaker (see strategies.moe_common.broken)
BREAKERS = {
    **mc.COMMON_BREAKERS,
    "qk_norm": lambda cfg, i, draw: mc.mutate_attention(cfg, i, qk_norm=native.RMSNormConfig(eps=1e-6)),
    "q_bias": lambda cfg, i, draw: mc.mutate_attention(cfg, i, q_bias=True),
    "o_bias": lambda cfg, i, draw: mc.mutate_attention(cfg, i, o_bias=True),
    "mlp.kind": lambda cfg, i, draw: mc.mutate_block(cfg, i, mlp=native.MLPConfig(
        intermediate=cfg.decoder.layer(i).mlp.intermediate, activation=cfg.decoder.layer(i).mlp.activation)),
    "normalize_top_k": lambda cfg, i, draw: mc.mutate_mlp(cfg, i, normalize_top_k=False),
    "shared_intermediate": lambda cfg, i, draw: mc.mutate_mlp(cfg, i, shared_intermediate=draw(bb.intermediate_sizes(32))),
    "attention.window": _two_windows,
    "experts": _other_experts,
}


def unrepresentable_configs():
    """``(field, cfg)``: ``export_config(cfg)`` must raise ConversionError naming ``field``."""
    return mc.broken(native_configs(), BREAKERS)


def hf_examples() -> list[dict]:
    """For ``@example``: the transformers default (a 47B model: config properties only), the real
    Mixtral-8x7B config, and the real config scaled down (small enough for weights and forward)."""
    from transformers import AutoConfig

    out = [AutoConfig.for_model(MODEL_TYPE).to_dict()]
    real = _real()
    if real is not None:
        out.append(real)
        out.append(mc.scaled_down(real, hidden_size=32, intermediate_size=24, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, num_local_experts=4,
                                      vocab_size=97, max_position_embeddings=64))
    return out



from . import _hf_common as _hc  # noqa: E402
hf_configs = _hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = _hc.with_real_configs(hf_examples, MODEL_TYPE)
