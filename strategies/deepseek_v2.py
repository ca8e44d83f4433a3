"""Strategies for the ``deepseek_v2`` converter.

- :func:`native_configs`: what DeepseekV2ForCausalLM can express: pre-norm RMSNorm blocks with one
  epsilon, multi-head latent attention (q LoRA or not, as V2-Lite), any HF rotary kind, dense layers
  then DeepSeekMoE layers (softmax scores, no score bias, greedy or group-limited routing with
  groups scored by their best expert, never renormalised, any scaling factor), tied or not.
- :func:`hf_configs`: DeepseekV2Config dicts in v4 and v5 rope forms, ``greedy`` (with inert
  ``n_group``/``topk_group`` or none) or ``group_limited_greedy``, with real configs' extra keys.
- :func:`unrepresentable_configs`: ``(cfg, field)``, one inexpressible feature each.
- :func:`hf_examples`: the transformers default, the real DeepSeek-V2-Lite-Chat config, scaled down.
"""
from __future__ import annotations

from hypothesis import strategies as st

import native

from . import _deepseek as ds
from . import _hf_common as _hc
from . import _mutations as mu
from . import moe_common as mc

MODEL_TYPE = "deepseek_v2"
ARCHITECTURE = "DeepseekV2ForCausalLM"
REAL_CONFIG = "deepseek-ai__DeepSeek-V2-Lite-Chat.json"


def _moe(draw, activation: str) -> native.DeepSeekMoEConfig:
    sizes = draw(ds.groups_and_top_k(min_per_group=1, grouped=draw(st.booleans())))
    return native.DeepSeekMoEConfig(
        **sizes, intermediate=draw(st.integers(1, 16)), activation=activation,
        shared_experts=draw(st.integers(1, 2)), scoring="softmax", score_bias=False, group_score="max",
        normalize_top_k=False, scaling_factor=draw(st.sampled_from((1.0, 16.0, 2.5))))


def native_configs():
    return ds.native_configs(_moe, even=True)


@st.composite
def hf_configs(draw) -> dict:
    hf = draw(ds.hf_base(MODEL_TYPE, ARCHITECTURE))
    grouped = draw(st.booleans())
    sizes = draw(ds.groups_and_top_k(min_per_group=1, grouped=grouped))
    hf = ds.with_groups(hf, sizes)
    if grouped:
        hf.update(topk_method="group_limited_greedy", n_group=sizes["groups"], topk_group=sizes["top_groups"])
    else:
        if draw(st.booleans()):
            hf["topk_method"] = "greedy"
        if draw(st.booleans()):
            hf.update(n_group=1, topk_group=1)
    hf["routed_scaling_factor"] = draw(st.sampled_from((1.0, 16.0)))
    for key, value in (("norm_topk_prob", False), ("scoring_func", "softmax"), ("aux_loss_alpha", 0.001),
                       ("seq_aux", True)):
        if draw(st.booleans()):
            hf[key] = value
    return hf


def _make(cfg):
    act = cfg.decoder.layer(0).mlp.activation
    return native.DeepSeekMoEConfig(experts=4, top_k=2, intermediate=8, activation=act, scoring="softmax",
                                    score_bias=False, group_score="max", normalize_top_k=False)


BREAKERS = {
    **ds.common_breakers(_make),
    "scoring": ds.moe_breaker(_make, scoring="sigmoid"),
    "score_bias": ds.moe_breaker(_make, score_bias=True),
    "group_score": ds.moe_breaker(_make, fresh=True, group_score="top2_sum"),
    "normalize_top_k": ds.moe_breaker(_make, normalize_top_k=True),
    "hidden_size": lambda cfg, i, draw: mu.mutate_attention(cfg, i, heads=cfg.hidden_size + 1),
}


def unrepresentable_configs():
    """``(cfg, field)``: ``export_config(cfg)`` must raise ConversionError naming ``field``."""
    return mc.broken(native_configs(), BREAKERS)


def _real() -> dict:
    return _hc.real_config(REAL_CONFIG)


def hf_examples() -> list[dict]:
    """For ``@example``: the real DeepSeek-V2-Lite-Chat config and the real config scaled down.
    (Not the transformers default: its ``num_experts_per_tok`` is null with every layer MoE, a
    config transformers itself cannot build a model from; the converter refuses it.)"""
    return [_real(), ds.scaled_down(_real())]


hf_configs = _hc.with_real_file_forms(hf_configs, MODEL_TYPE)
