"""Llama (``model_type: llama``): the native configs its converter must accept.

What HF Llama (transformers 5.x ``LlamaConfig``/``modeling_llama``) can express, and so what is drawn:

- pre-norm blocks, RMSNorm everywhere with one ``rms_norm_eps``; no q/k norm;
- gated MLP with any ``hidden_act`` the native model has (``silu``, ``gelu``, ``gelu_tanh`` as
  ``gelu_pytorch_tanh``, ``relu``), optional ``mlp_bias`` on both projections;
- ``attention_bias``: q, k, v and o biases all on or all off;
- GQA/MQA/MHA with a free ``head_dim``, but ``hidden_size`` a multiple of ``num_attention_heads``
  (``LlamaConfig.validate_architecture`` refuses anything else);
- rotary: default, linear, dynamic, llama3, yarn, longrope, full rotation only (Llama's
  ``apply_rotary_pos_emb`` rotates the whole head), with parameters transformers validates
  without warnings;
- tied or untied output; every layer the same block; no window, softcap, softmax scale or
  embedding multiplier.
"""
from __future__ import annotations

from hypothesis import strategies as st

from . import _hf_common as _hc
from . import building_blocks as bb
from .generic import native_configs as _native_configs

MODEL_TYPE = "llama"

#: The constraints, exposed so variants (Mistral, ...) state only their differences.
CONSTRAINTS = {
    **_hc.PLAIN,
    "hidden": "multiple_of_heads",
    "attention_biases": bb.BIAS_ALL_OR_NOTHING,
    "mlp_biases": (False, True),
}


def native_configs(**overrides) -> st.SearchStrategy:
    """Native configs a Llama converter must accept (``overrides`` narrow or widen CONSTRAINTS)."""
    # (hf_buildable: no dynamic rotary over 2 dims, which transformers cannot build)
    return _native_configs(**{**CONSTRAINTS, **overrides}).map(_hc.hf_buildable)


# ----------------------------------------------------------------- HF dicts, examples, refusals
# (appended by the property-suite work; the shared pieces are in strategies/_llama_family.py)
from . import _llama_family as lf  # noqa: E402


def hf_configs() -> st.SearchStrategy[dict]:
    """LlamaConfig dicts: ``hidden_size`` a multiple of the head count (LlamaConfig validates it),
    ``head_dim`` drawn, derived, absent or null, ``attention_bias``/``mlp_bias``, rope v4 or v5."""
    return lf.hf_configs(MODEL_TYPE, "LlamaForCausalLM", hidden_multiple_of_heads=True,
                         bias_keys=("attention_bias", "mlp_bias"), null_head_dim=True, carried=("pretraining_tp",))


def hf_examples() -> list[dict]:
    """The LlamaConfig default, Llama-3.1-8B as published, and Llama-3.1-8B scaled down (llama3 rope
    with its original context shrunk so a forward pass exceeds it)."""
    def small(real):
        return _hc.scaled_down(real, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                               max_position_embeddings=64,
                               rope_scaling={**real["rope_scaling"], "original_max_position_embeddings": 16})
    return lf.examples(MODEL_TYPE, "meta-llama__Llama-3.1-8B.json", small)


def unrepresentable_configs() -> st.SearchStrategy:
    """``(config, field)``: a Llama config with one feature Llama cannot express (a window, a
    partial bias pattern, LayerNorm, q/k norm, softcaps, MoE, ...)."""
    return lf.unrepresentable_configs(native_configs(), biases=bb.BIAS_ALL_OR_NOTHING, mlp_bias=True, windows="none")


hf_configs = _hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = _hc.with_real_configs(hf_examples, MODEL_TYPE)
