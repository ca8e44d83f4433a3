"""Qwen3 (``model_type: qwen3``).

Differences from :mod:`strategies.qwen2`:

- per-head RMS q/k norm (``q_norm``/``k_norm`` over ``head_dim``), with the model's single
  ``rms_norm_eps``;
- ``attention_bias``: q, k, v and o all on or all off;
- ``head_dim`` is a first-class ``Qwen3Config`` key; windows follow Qwen2's suffix rule.
"""
from __future__ import annotations

from hypothesis import strategies as st

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
    return _native_configs(**{**CONSTRAINTS, **overrides})
