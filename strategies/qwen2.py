"""Qwen2 (``model_type: qwen2``).

Differences from :mod:`strategies.mistral`:

- q, k and v biased, o not (Qwen2's hard-wired ``bias=True`` on q/k/v, ``bias=False`` on o); no MLP bias;
- sliding windows per layer by Qwen2's rule (``configuration_qwen2.py``: with ``use_sliding_window``,
  ``layer_types[i] = "sliding_attention" if i >= max_window_layers``): a *suffix* of the layers
  shares one window, from ``max_window_layers = 0`` (all) to ``num_layers`` (none);
- ``head_dim`` free: ``Qwen2Config`` keeps an extra ``head_dim`` key and ``Qwen2Attention`` reads it.

(transformers 5 also accepts an explicit ``layer_types`` list, which can express any sliding
subset; a converter that exports one may widen ``layer_patterns`` to include "arbitrary".)
"""
from __future__ import annotations

from hypothesis import strategies as st

from . import _hf_common as _hc
from . import building_blocks as bb
from .generic import native_configs as _native_configs
from .mistral import CONSTRAINTS as _MISTRAL

MODEL_TYPE = "qwen2"

CONSTRAINTS = {
    **_MISTRAL,
    "attention_biases": bb.BIAS_QKV,
    "mlp_biases": (False,),
    "windows": ("none", "patterned"),
    "layer_patterns": ("suffix",),
}


def native_configs(**overrides) -> st.SearchStrategy:
    """Native configs a Qwen2 converter must accept."""
    # (hf_buildable: no dynamic rotary over 2 dims, which transformers cannot build)
    return _native_configs(**{**CONSTRAINTS, **overrides}).map(_hc.hf_buildable)


# ----------------------------------------------------------------- HF dicts, examples, refusals
# (appended by the property-suite work; the shared pieces are in strategies/_llama_family.py)
from . import _llama_family as lf  # noqa: E402


def hf_configs() -> st.SearchStrategy[dict]:
    """Qwen2Config dicts: no bias keys (q/k/v biased, o not), ``head_dim`` drawn, derived or
    absent, the four window keys each present or absent, ``use_mrope``."""
    return lf.hf_configs(MODEL_TYPE, "Qwen2ForCausalLM", windows="qwen", carried=("use_mrope",),
                         kv_default=32)


def hf_examples() -> list[dict]:
    """The Qwen2Config default, Qwen2.5-0.5B as published, and scaled down (its inert window keys kept)."""
    def small(real):
        return _hc.scaled_down(real, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                               max_position_embeddings=64)
    return lf.examples(MODEL_TYPE, "Qwen__Qwen2.5-0.5B.json", small)


def unrepresentable_configs() -> st.SearchStrategy:
    """``(config, field)``: a Qwen2 config with one feature Qwen2 cannot express (another bias
    pattern, an MLP bias, two window sizes, ...)."""
    return lf.unrepresentable_configs(native_configs(), biases=bb.BIAS_QKV, mlp_bias=False, windows="one")


hf_configs = _hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = _hc.with_real_configs(hf_examples, MODEL_TYPE)
