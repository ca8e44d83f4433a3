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

from . import building_blocks as bb
from .generic import native_configs as _native_configs

MODEL_TYPE = "llama"
ROTARY_KINDS = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")

#: The constraints, exposed so variants (Mistral, ...) state only their differences.
CONSTRAINTS = dict(
    hidden="multiple_of_heads",
    placements=("pre",),
    norm_kinds=("rms",),
    shared_eps=True,
    final_norm="same",
    qk_norms=("none",),
    rotary_kinds=ROTARY_KINDS,
    rotary_fractions=("full",),
    hf_valid_rotary=True,
    attention_biases=bb.BIAS_ALL_OR_NOTHING,
    mlp_biases=(False, True),
    feed_forwards=("mlp",),
    gated=(True,),
    windows=("none",),
    layer_patterns=("uniform",),
    varying=(),
    tied=(False, True),
    embedding_multipliers=("none",),
    softmax_scales=("none",),
    attention_softcaps=("none",),
    final_softcaps=("none",),
)


def native_configs(**overrides) -> st.SearchStrategy:
    """Native configs a Llama converter must accept (``overrides`` narrow or widen CONSTRAINTS)."""
    return _native_configs(**{**CONSTRAINTS, **overrides})
