"""Qwen3: Qwen2's windows, all-or-nothing attention bias, per-head RMS q/k norm, explicit head_dim."""
from __future__ import annotations

from .config_primitives import ConstantImport, Rename
from .attention import bias_flag
from .llama import LlamaConverter, rms_norm
from .qwen2 import Qwen2Converter


class Qwen3Converter(Qwen2Converter):
    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"
    carried = tuple(k for k in LlamaConverter.carried if k != "pretraining_tp")

    def layer_section(self):
        return {
            **super().layer_section(),
            "bias": bias_flag("attention_bias"),
            "head_dim": Rename("attention.head_dim", "head_dim", default=128),
            "qk_norm": rms_norm("attention.qk_norm", "rms_norm_eps", self.norm_eps_default),
            "qk_norm_scope": ConstantImport("attention.qk_norm_scope", "head", "Qwen3 normalises q/k per head"),
        }
