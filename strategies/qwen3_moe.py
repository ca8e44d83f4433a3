"""Strategies for the ``qwen3_moe`` converter.

- :func:`native_configs`: pre-norm RMSNorm blocks with one epsilon (q/k norm per head included);
  q/k/v/o biases all on or all off; full rotary of any HF kind; one sliding window on every layer
  or none; any subset of layers dense (a gated MLP), the others one sparse MoE without a shared
  expert, sharing the activation.
- :func:`hf_configs`: Qwen3MoeConfig dicts, v4 and v5 rope forms, ``num_experts`` or
  ``num_local_experts``, sparse layers by ``num_experts``/``decoder_sparse_step``/``mlp_only_layers``,
  ``head_dim`` explicit (default or not) or absent, the window by ``use_sliding_window``, and the
  ``max_window_layers`` real Qwen3 configs carry.
- :func:`unrepresentable_configs`.
- :func:`hf_examples`: the transformers default and Qwen3-30B-A3B as published (and scaled down).
"""
from __future__ import annotations

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from . import moe_common as mc
from .generic import native_configs as generic_configs
from .qwen2_moe import QWEN_BREAKERS, on_sparse, sparse_keys, with_dense_layers

MODEL_TYPE = "qwen3_moe"
ARCHITECTURE = "Qwen3MoeForCausalLM"

#: The public Qwen3-30B-A3B config.json (as published; not in ../shared/real_configs).
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
    "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
    "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


@st.composite
def native_configs(draw):
    cfg = draw(generic_configs(**{
        **hc.PLAIN, "qk_norms": ("head",), "qk_norm_kinds": ("rms",), "attention_biases": bb.BIAS_ALL_OR_NOTHING,
        "feed_forwards": ("moe",), "moe_shared": (False,), "moe_shared_gate": (False,), "windows": ("none", "uniform")}))
    return hc.hf_buildable(draw(with_dense_layers(cfg)))


@st.composite
def hf_configs(draw) -> dict:
    hf = draw(mc.hf_base(MODEL_TYPE, ARCHITECTURE))
    n = hf["num_hidden_layers"]
    hf.update(draw(st.one_of(st.just({}), st.booleans().map(lambda b: {"attention_bias": b}))))
    hf.update(draw(sparse_keys(n, experts_key=draw(st.sampled_from(("num_local_experts", "num_experts"))),
                               shared=False)))
    use = draw(st.one_of(st.none(), st.booleans()))
    if use is not None:
        hf["use_sliding_window"] = use
    window = draw(st.one_of(st.just("absent"), st.none(), bb.windows()))
    if window != "absent":
        hf["sliding_window"] = window
    hf.update(draw(st.one_of(st.just({}), st.integers(0, n + 1).map(lambda m: {"max_window_layers": m}))))
    return hf


def make_moe(cfg: native.ModelConfig) -> native.MoEConfig:
    return next((b.mlp for b in cfg.decoder.layers() if isinstance(b.mlp, native.MoEConfig)), None) or \
        native.MoEConfig(experts=2, top_k=1, intermediate=4, activation=cfg.decoder.layer(0).mlp.activation)


def _window_on_one_layer(cfg, draw):
    window = draw(bb.windows())
    return mu.mutate_attention(mu.mutate_attention(cfg, 0, window=None), 1, window=window)


#: field → breaker (see strategies.moe_common.broken)
BREAKERS = {
    **QWEN_BREAKERS,
    "qk_norm": lambda cfg, i, draw: mu.mutate_attention(cfg, i, qk_norm=None),
    "qk_norm_scope": lambda cfg, i, draw: mu.mutate_attention(cfg, i, qk_norm_scope="full"),
    "o_bias": lambda cfg, i, draw: mu.mutate_attention(cfg, i, o_bias=not cfg.decoder.layer(i).attention.o_bias),
    "shared_intermediate": on_sparse(lambda moe, draw: {"shared_intermediate": draw(bb.intermediate_sizes(32))},
                                     make=make_moe),
    "top_k": on_sparse(lambda moe, draw: {"experts": max(2, moe.experts), "top_k": 1 if moe.top_k > 1 else 2},
                       count=2, make=make_moe),
    "attention.window": mc.second_layer(_window_on_one_layer),
}


def unrepresentable_configs():
    """``(cfg, field)``: ``export_config(cfg)`` must raise ConversionError naming ``field``."""
    return mc.broken(native_configs(), BREAKERS)


def hf_examples() -> list[dict]:
    """For ``@example``: the transformers default (config properties only), Qwen3-30B-A3B as
    published, and scaled down with a dense first layer."""
    from transformers import AutoConfig

    small = hc.scaled_down(QWEN3_30B_A3B, hidden_size=32, intermediate_size=24, moe_intermediate_size=8,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=3,
                           num_experts=6, num_experts_per_tok=2, vocab_size=97, max_position_embeddings=64,
                           mlp_only_layers=[0])
    return [AutoConfig.for_model(MODEL_TYPE).to_dict(), QWEN3_30B_A3B, small]


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
