"""``hidden_act``: the native activation names and HF's, one table for every converter."""
from __future__ import annotations

from typing import Any

from .errors import ConversionError

#: (native name, HF ``hidden_act``)
ACTIVATIONS = (("silu", "silu"), ("gelu", "gelu"), ("gelu_tanh", "gelu_pytorch_tanh"), ("relu", "relu"))


def activation_to_hf(value: str) -> str:
    hf = dict(ACTIVATIONS)
    if value not in hf:
        raise ConversionError(f"mlp.activation={value!r} cannot be expressed as 'hidden_act' (supported: {sorted(hf)})")
    return hf[value]


def activation_to_native(value: Any) -> str:
    to_native = {hf: name for name, hf in ACTIVATIONS}
    if not isinstance(value, str) or value not in to_native:
        raise ConversionError(f"config.json: hidden_act={value!r} is not supported (supported: {sorted(to_native)})")
    return to_native[value]
