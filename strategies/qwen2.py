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
    return _native_configs(**{**CONSTRAINTS, **overrides})
