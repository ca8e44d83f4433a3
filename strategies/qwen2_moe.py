"""Strategies for the ``qwen2_moe`` converter.

- :func:`native_configs`: pre-norm RMSNorm blocks with one epsilon; q/k/v biases all on or all off
  (o never); full rotary of any HF kind; sliding windows on any subset of layers (one size); any
  subset of layers dense (a gated MLP) and the others one sparse MoE with a gated shared expert,
  the dense and expert MLPs sharing their activation.
- :func:`hf_configs`: Qwen2MoeConfig dicts, v4 and v5 rope forms: sparse layers chosen by
  ``num_experts`` (0 included), ``decoder_sparse_step`` and ``mlp_only_layers`` (unsorted,
  redundant, out of range); windows by ``use_sliding_window``/``max_window_layers`` or explicit
  ``layer_types``; inert keys (window settings while disabled, MoE sizes with no sparse layer).
- :func:`unrepresentable_configs`.
- :func:`hf_examples`: the transformers default and a Qwen1.5-MoE-A2.7B-style config (scaled down).
"""
from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

import native
from converters.sliding import FULL, SLIDING

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from . import moe_common as mc
from .generic import native_configs as generic_configs

MODEL_TYPE = "qwen2_moe"
ARCHITECTURE = "Qwen2MoeForCausalLM"
BIASES = (bb.BiasPattern(False, False, False, False), bb.BiasPattern(True, True, True, False))

#: The public Qwen1.5-MoE-A2.7B config.json (as published; not in ../shared/real_configs).
QWEN15_MOE_A27B = {
    "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "decoder_sparse_step": 1, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 8192,
    "max_window_layers": 21, "model_type": "qwen2_moe", "moe_intermediate_size": 1408, "norm_topk_prob": False,
    "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 16, "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 5632, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


@st.composite
def native_configs(draw):
    cfg = draw(generic_configs(**{
        **hc.PLAIN, "attention_biases": BIASES, "feed_forwards": ("moe",), "moe_shared": (True,),
        "moe_shared_gate": (True,), "windows": bb.WINDOW_MODES, "layer_patterns": bb.LAYER_PATTERN_KINDS}))
    return hc.hf_buildable(draw(with_dense_layers(cfg)))


@st.composite
def with_dense_layers(draw, cfg: native.ModelConfig) -> native.ModelConfig:
    """Make a drawn subset of layers dense (none first), sharing the MoE's activation."""
    dense = draw(bb.layer_patterns(cfg.num_layers)).flags
    if not any(dense):
        return cfg
    moe = cfg.decoder.layer(0).mlp
    mlp = native.MLPConfig(intermediate=draw(bb.intermediate_sizes(32)), gated=True, activation=moe.activation)
    return mu.with_layers(cfg, [dataclasses.replace(block, mlp=mlp) if flag else block
                                for flag, block in zip(dense, cfg.decoder.layers())])


@st.composite
def sparse_keys(draw, num_layers: int, *, experts_key: str, shared: bool) -> dict:
    """The keys choosing and sizing the sparse layers (shared by Qwen2-MoE and Qwen3-MoE)."""
    experts = draw(st.one_of(st.integers(1, bb.MAX_EXPERTS), st.just(0)))
    hf = {experts_key: experts, "num_experts_per_tok": draw(st.integers(1, max(1, experts))),
          "moe_intermediate_size": draw(bb.intermediate_sizes(32))}
    if shared:
        hf["shared_expert_intermediate_size"] = draw(bb.intermediate_sizes(32))
    hf.update(draw(st.one_of(st.just({}), st.booleans().map(lambda b: {"norm_topk_prob": b}))))
    hf.update(draw(st.one_of(st.just({}), st.integers(1, 3).map(lambda s: {"decoder_sparse_step": s}))))
    mlp_only = st.lists(st.integers(0, num_layers), unique=True, max_size=num_layers + 1)
    hf.update(draw(st.one_of(st.just({}), mlp_only.map(lambda m: {"mlp_only_layers": m}))))
    return hf


@st.composite
def window_keys(draw, num_layers: int) -> dict:
    """``use_sliding_window``/``sliding_window``/``max_window_layers``/``layer_types``, each
    present or absent; explicit sliding layers only where the window is on."""
    hf: dict = {}
    use = draw(st.one_of(st.none(), st.booleans()))
    if use is not None:
        hf["use_sliding_window"] = use
    window = draw(st.one_of(st.none(), bb.windows(), st.just("absent")))
    if window is None and use:
        window = "absent"  # a null window on sliding layers is refused; tested separately
    if window != "absent":
        hf["sliding_window"] = window
    hf.update(draw(st.one_of(st.just({}), st.integers(0, num_layers + 1).map(lambda m: {"max_window_layers": m}))))
    if draw(st.booleans()):
        flags = draw(st.lists(st.booleans(), min_size=num_layers, max_size=num_layers)) if use else [False] * num_layers
        hf["layer_types"] = [SLIDING if f else FULL for f in flags]
    return hf


@st.composite
def hf_configs(draw) -> dict:
    hf = draw(mc.hf_base(MODEL_TYPE, ARCHITECTURE))
    n = hf["num_hidden_layers"]
    hf.update(draw(st.one_of(st.just({}), st.booleans().map(lambda b: {"qkv_bias": b}))))
    hf.update(draw(sparse_keys(n, experts_key="num_experts", shared=True)))
    hf.update(draw(window_keys(n)))
    return hf


def _activation(cfg: native.ModelConfig) -> str:
    return cfg.decoder.layer(0).mlp.activation


def _some(cfg: native.ModelConfig, kind: type, fallback):
    return next((b.mlp for b in cfg.decoder.layers() if isinstance(b.mlp, kind)), None) or fallback


def make_moe(cfg: native.ModelConfig) -> native.MoEConfig:
    """The config's sparse MoE, or a small one with a gated shared expert."""
    return _some(cfg, native.MoEConfig, native.MoEConfig(experts=2, top_k=1, intermediate=4, activation=_activation(cfg),
                                                         shared_intermediate=4, shared_gate=True))


def make_dense(cfg: native.ModelConfig) -> native.MLPConfig:
    return _some(cfg, native.MLPConfig, native.MLPConfig(intermediate=8, activation=_activation(cfg)))


def on_sparse(change, count: int = 1, make=make_moe):
    """A breaker changing the last of ``count`` sparse layers (made when missing)."""
    def breaker(cfg, i, draw):
        cfg, sparse = mu.layers_of(cfg, native.MoEConfig, make, count)
        return mu.mutate_mlp(cfg, sparse[-1], **change(cfg.decoder.layer(sparse[-1]).mlp, draw))
    return breaker


def on_dense(change):
    def breaker(cfg, i, draw):
        cfg, dense = mu.layers_of(cfg, native.MLPConfig, make_dense)
        return mu.mutate_mlp(cfg, dense[0], **change)
    return breaker


#: breakers of both Qwen MoE formats: dense layers among the sparse ones, one activation for all
QWEN_BREAKERS = {
    **mc.COMMON_BREAKERS,
    "gated": on_dense({"gated": False}),
    "bias": on_dense({"bias": True}),
    "activation": mc.second_layer(lambda cfg, draw: mu.mutate_mlp(
        cfg, 1, activation=mu.other_activation(cfg.decoder.layer(1).mlp.activation))),
}

#: field → breaker (see strategies.moe_common.broken)
BREAKERS = {
    **QWEN_BREAKERS,
    "qk_norm": lambda cfg, i, draw: mu.mutate_attention(cfg, i, qk_norm=native.RMSNormConfig(eps=1e-6)),
    "o_bias": lambda cfg, i, draw: mu.mutate_attention(cfg, i, o_bias=True),
    "k_bias": lambda cfg, i, draw: mu.mutate_attention(cfg, i, k_bias=not cfg.decoder.layer(i).attention.k_bias),
    "shared_gate": on_sparse(lambda moe, draw: {"shared_gate": False}),
    "shared_intermediate": on_sparse(lambda moe, draw: {"shared_intermediate": None, "shared_gate": False}),
    "experts": on_sparse(lambda moe, draw: {"experts": moe.experts + 1}, count=2),
    "attention.window": mc.second_layer(mc.two_windows),
}


def unrepresentable_configs():
    """``(cfg, field)``: ``export_config(cfg)`` must raise ConversionError naming ``field``."""
    return mc.broken(native_configs(), BREAKERS)


def hf_examples() -> list[dict]:
    """For ``@example``: the transformers default (config properties only), Qwen1.5-MoE-A2.7B as
    published, and scaled down with two dense layers among four."""
    from transformers import AutoConfig

    small = hc.scaled_down(QWEN15_MOE_A27B, hidden_size=32, intermediate_size=24, moe_intermediate_size=8,
                           shared_expert_intermediate_size=20, num_attention_heads=4, num_key_value_heads=4,
                           num_hidden_layers=4, num_experts=6, num_experts_per_tok=2, vocab_size=97,
                           max_position_embeddings=64, mlp_only_layers=[0, 2], max_window_layers=3)
    return [AutoConfig.for_model(MODEL_TYPE).to_dict(), QWEN15_MOE_A27B, small]


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
