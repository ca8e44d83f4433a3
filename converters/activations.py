"""``hidden_act``: the native activation names and HF's, one table for every converter."""
from __future__ import annotations

from typing import Any

from .errors import ConversionError

#: (native name, HF ``hidden_act``)
ACTIVATIONS = (("silu", "silu"), ("gelu", "gelu"), ("gelu_tanh", "gelu_pytorch_tanh"), ("relu", "relu"))


def activation_to_hf(value: str) -> str:
    for native_value, hf_value in ACTIVATIONS:
        if native_value == value:
            return hf_value
    raise ConversionError(f"mlp.activation={value!r} cannot be expressed as 'hidden_act' "
                          f"(supported: {sorted(n for n, _ in ACTIVATIONS)})")


def activation_to_native(value: Any) -> str:
    for native_value, hf_value in ACTIVATIONS:
        if hf_value == value:
            return native_value
    raise ConversionError(f"config.json: hidden_act={value!r} is not supported "
                          f"(supported: {sorted(h for _, h in ACTIVATIONS)})")
