"""Mistral: Llama without biases, plus one sliding window for every layer (or none)."""
from __future__ import annotations

from .config_primitives import ConstantImport, Rename
from .attention import fixed_biases
from .llama import CARRIED, LlamaConverter

_NO_BIAS = "MistralForCausalLM has no bias switches"


class MistralConverter(LlamaConverter):
    model_type = "mistral"
    architecture = "MistralForCausalLM"
    max_position_default = 131072
    kv_heads_default = 8  # MistralConfig's default; null is refused by the class
    kv_null_is_heads = False
    carried = tuple(k for k in CARRIED if k != "pretraining_tp")

    def layer_section(self):
        return {
            **super().layer_section(),
            "bias": fixed_biases(False, False, False, False, _NO_BIAS),
            "window": Rename("attention.window", "sliding_window", default=4096),
        }

    def mlp_section(self):
        return {**super().mlp_section(), "bias": ConstantImport("bias", False, _NO_BIAS)}
