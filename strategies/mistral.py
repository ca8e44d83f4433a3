"""Mistral (``model_type: mistral``): Llama without biases, plus one sliding window for all layers.

Differences from :mod:`strategies.llama`:

- no ``attention_bias``/``mlp_bias`` keys: every bias off;
- ``sliding_window``: ``None`` or one window shared by every layer;
- ``MistralConfig`` has no ``validate_architecture``, so ``hidden_size`` is free of the head count.
"""
from __future__ import annotations

from hypothesis import strategies as st

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
    return _native_configs(**{**CONSTRAINTS, **overrides})
