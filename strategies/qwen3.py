"""Qwen3 (``model_type: qwen3``).

Differences from :mod:`strategies.qwen2`:

- per-head RMS q/k norm (``q_norm``/``k_norm`` over ``head_dim``), with the model's single
  ``rms_norm_eps``;
- ``attention_bias``: q, k, v and o all on or all off;
- ``head_dim`` is a first-class ``Qwen3Config`` key; windows follow Qwen2's suffix rule.
"""
from __future__ import annotations

from hypothesis import strategies as st

from . import _hf_common as _hc
from . import building_blocks as bb
from .generic import native_configs as _native_configs
from .qwen2 import CONSTRAINTS as _QWEN2

MODEL_TYPE = "qwen3"

CONSTRAINTS = {
    **_QWEN2,
    "qk_norms": ("head",),
    "qk_norm_kinds": ("rms",),
    "attention_biases": bb.BIAS_ALL_OR_NOTHING,
}


def native_configs(**overrides) -> st.SearchStrategy:
    """Native configs a Qwen3 converter must accept."""
    # (hf_buildable: no dynamic rotary over 2 dims, which transformers cannot build)
    return _native_configs(**{**CONSTRAINTS, **overrides}).map(_hc.hf_buildable)


# ----------------------------------------------------------------- HF dicts, examples, refusals
# (appended by the property-suite work; the shared pieces are in strategies/_llama_family.py)
import native as _native  # noqa: E402

from . import _llama_family as lf  # noqa: E402
from . import _mutations as mu  # noqa: E402


def hf_configs() -> st.SearchStrategy[dict]:
    """Qwen3Config dicts: ``head_dim`` always written (the class default 128 is not derived from
    the sizes), ``attention_bias``, the four window keys each present or absent."""
    return lf.hf_configs(MODEL_TYPE, "Qwen3ForCausalLM", bias_keys=("attention_bias",), head_dim_required=True,
                         windows="qwen", kv_default=32)


def hf_examples() -> list[dict]:
    """The Qwen3Config default, Qwen3-8B as published, and scaled down."""
    def small(real):
        return _hc.scaled_down(real, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=97,
                               max_position_embeddings=64)
    return lf.examples(MODEL_TYPE, "Qwen__Qwen3-8B.json", small)


def _qk_norm_breaks(cfg, layer):
    a = cfg.decoder.layer(layer).attention
    return {"qk_norm": mu.mutate_attention(cfg, layer, qk_norm=None),  # replaces the shared "add one"
            "qk_norm_scope": mu.mutate_attention(cfg, layer, qk_norm_scope="full"),
            "qk_norm.kind": mu.mutate_attention(cfg, layer, qk_norm=_native.LayerNormConfig(eps=a.qk_norm.eps))}


def unrepresentable_configs() -> st.SearchStrategy:
    """``(config, field)``: a Qwen3 config with one feature Qwen3 cannot express (no or another q/k
    norm, a partial bias pattern, two window sizes, ...)."""
    return lf.unrepresentable_configs(native_configs(), biases=bb.BIAS_ALL_OR_NOTHING, mlp_bias=False,
                                      windows="one", extra=_qk_norm_breaks)


hf_configs = _hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = _hc.with_real_configs(hf_examples, MODEL_TYPE)
