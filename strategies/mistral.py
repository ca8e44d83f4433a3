"""Mistral (``model_type: mistral``): Llama without biases, plus one sliding window for all layers.

Differences from :mod:`strategies.llama`:

- no ``attention_bias``/``mlp_bias`` keys: every bias off;
- ``sliding_window``: ``None`` or one window shared by every layer;
- ``MistralConfig`` has no ``validate_architecture``, so ``hidden_size`` is free of the head count.
"""
from __future__ import annotations

from hypothesis import strategies as st

from . import _hf_common as _hc
from . import building_blocks as bb
from .generic import native_configs as _native_configs
from .llama import CONSTRAINTS as _LLAMA

MODEL_TYPE = "mistral"

CONSTRAINTS = {
    **_LLAMA,
    "hidden": "free",
    "attention_biases": bb.BIAS_NONE,
    "mlp_biases": (False,),
    "windows": ("none", "uniform"),
}


def native_configs(**overrides) -> st.SearchStrategy:
    """Native configs a Mistral converter must accept."""
    # (hf_buildable: no dynamic rotary over 2 dims, which transformers cannot build)
    return _native_configs(**{**CONSTRAINTS, **overrides}).map(_hc.hf_buildable)


# ----------------------------------------------------------------- HF dicts, examples, refusals
# (appended by the property-suite work; the shared pieces are in strategies/_llama_family.py)
from . import _llama_family as lf  # noqa: E402


def hf_configs() -> st.SearchStrategy[dict]:
    """MistralConfig dicts: no bias keys, ``sliding_window`` absent (4096), null or a size."""
    return lf.hf_configs(MODEL_TYPE, "MistralForCausalLM", null_head_dim=True, windows="mistral", kv_default=8)


def hf_examples() -> list[dict]:
    """The MistralConfig default (no real Mistral config is in ../shared/real_configs)."""
    return lf.examples(MODEL_TYPE, None, None)


def unrepresentable_configs() -> st.SearchStrategy:
    """``(config, field)``: a Mistral config with one feature Mistral cannot express (any bias, an
    MLP bias, two window sizes, ...)."""
    return lf.unrepresentable_configs(native_configs(), biases=bb.BIAS_NONE, mlp_bias=False, windows="one")


hf_configs = _hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = _hc.with_real_configs(hf_examples, MODEL_TYPE)
