"""Strategies for the ``deepseek_v3`` converter.

- :func:`native_configs`: what DeepseekV3ForCausalLM can express: pre-norm RMSNorm blocks with one
  epsilon, multi-head latent attention (q LoRA or not, biases or not) with any HF rotary kind,
  dense layers then DeepSeekMoE layers (sigmoid scores, score bias, groups scored by their two best
  experts, renormalised or not, any scaling factor, 1-2 shared experts), tied or not; HF rope rows
  interleaved (the default) or half-split (``rope_interleave`` in metadata).
- :func:`hf_configs`: DeepseekV3Config dicts in v4 and v5 rope forms, with the keys real configs
  carry (``moe_layer_freq``, ``scoring_func``, ``topk_method``, ``num_nextn_predict_layers``, …).
- :func:`unrepresentable_configs`: ``(cfg, field)``, one inexpressible feature each.
- :func:`hf_examples`: the transformers default, the real DeepSeek-V3 config, and it scaled down.
"""
from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

import native

from . import _deepseek as ds
from . import _hf_common as _hc
from . import moe_common as mc

MODEL_TYPE = "deepseek_v3"
ARCHITECTURE = "DeepseekV3ForCausalLM"
REAL_CONFIG = "deepseek-ai__DeepSeek-V3.json"


def _moe(draw, activation: str) -> native.DeepSeekMoEConfig:
    sizes = draw(ds.groups_and_top_k(min_per_group=2, grouped=True))
    return native.DeepSeekMoEConfig(
        **sizes, intermediate=draw(st.integers(1, 16)), activation=activation,
        shared_experts=draw(st.integers(1, 2)), scoring="sigmoid", score_bias=True, group_score="top2_sum",
        normalize_top_k=draw(st.booleans()), scaling_factor=draw(st.sampled_from((1.0, 2.5, 1.5))))


@st.composite
def native_configs(draw):
    cfg = draw(ds.native_configs(_moe))
    if draw(st.booleans()):
        cfg = dataclasses.replace(cfg, metadata={**cfg.metadata, "rope_interleave": False})
    return cfg


@st.composite
def hf_configs(draw) -> dict:
    hf = draw(ds.hf_base(MODEL_TYPE, ARCHITECTURE))
    sizes = draw(ds.groups_and_top_k(min_per_group=2, grouped=True))
    hf = ds.with_groups(hf, sizes)
    hf.update(n_group=sizes["groups"], topk_group=sizes["top_groups"],
              norm_topk_prob=draw(st.booleans()), routed_scaling_factor=draw(st.sampled_from((1.0, 2.5))))
    for key, value in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc"),
                       ("num_nextn_predict_layers", draw(st.integers(0, 1))), ("rope_interleave", draw(st.booleans()))):
        if draw(st.booleans()):
            hf[key] = value
    return hf


def _make(cfg):
    act = cfg.decoder.layer(0).mlp.activation
    return native.DeepSeekMoEConfig(experts=4, top_k=2, intermediate=8, activation=act, groups=2, top_groups=1)


BREAKERS = {
    **ds.common_breakers(_make),
    "scoring": ds.moe_breaker(_make, scoring="softmax"),
    "score_bias": ds.moe_breaker(_make, score_bias=False),
    "group_score": ds.moe_breaker(_make, group_score="max"),
}


def unrepresentable_configs():
    """``(cfg, field)``: ``export_config(cfg)`` must raise ConversionError naming ``field``."""
    return mc.broken(native_configs(), BREAKERS)


def _real() -> dict:
    """The real DeepSeek-V3 config without its ``quantization_config`` (the pipeline's, in
    checkpoints.fp8, never the converter's)."""
    return {k: v for k, v in _hc.real_config(REAL_CONFIG).items() if k != "quantization_config"}


def hf_examples() -> list[dict]:
    """For ``@example``: the transformers default (config properties only), the real DeepSeek-V3
    config (its ``quantization_config`` aside) and the real config scaled down."""
    from transformers import AutoConfig

    return [AutoConfig.for_model(MODEL_TYPE).to_dict(), _real(),
            ds.scaled_down(_real(), n_group=4, topk_group=2, q_lora_rank=16)]


hf_configs = _hc.with_real_file_forms(hf_configs, MODEL_TYPE)
