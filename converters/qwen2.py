"""Qwen2: q/k/v biases on and o off (hard-coded by HF), per-layer sliding windows."""
from __future__ import annotations

from .attention import HeadDim, fixed_biases
from .config_primitives import ConstantImport
from .llama import CARRIED, LlamaConverter
from .sliding import QwenSlidingWindows


class Qwen2Converter(LlamaConverter):
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"
    max_position_default = 32768
    kv_heads_default = 32  # Qwen2Config's default (null means num_attention_heads)
    # use_mrope is read only by Qwen2-VL; for qwen2 it is inert, so carried
    carried = tuple(k for k in CARRIED if k != "pretraining_tp") + ("use_mrope",)

    def layer_section(self):
        return {
            **super().layer_section(),
            "bias": fixed_biases(True, True, True, False,
                                 "Qwen2 hard-codes q/k/v biases on and the o bias off"),
            "window": QwenSlidingWindows(),
            # Qwen2Config has no head_dim field (the model reads it with getattr, defaulting to
            # hidden/heads): written where it differs from that or config.json had it explicitly.
            "head_dim": HeadDim(),
        }

    def mlp_section(self):
        return {**super().mlp_section(), "bias": ConstantImport("bias", False, "Qwen2 MLPs have no bias")}

