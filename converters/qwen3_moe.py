"""Qwen3-MoE: Qwen3 attention (per-head RMS q/k norm, one ``attention_bias`` for q/k/v/o) with
per-layer dense/sparse MLPs, no shared expert, and one sliding window for all layers or none.

Differences from Qwen3 that matter:
- ``head_dim`` is not a Qwen3MoeConfig field: the model reads ``getattr(config, "head_dim",
  hidden_size // num_attention_heads)``, so an absent key means that default (Qwen3: 128).
- ``num_experts`` is an alias of ``num_local_experts`` (``attribute_map``); transformers saves
  ``num_local_experts``, and so does this converter.
- The window: ``sliding_window`` applies to every layer iff ``use_sliding_window``; there are no
  ``layer_types``, and ``max_window_layers`` (in real configs, but no field and never read) is carried.

On disk: ``mlp.gate`` (router), ``mlp.experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj``; dense
layers ``mlp.gate_proj`` / ``up_proj`` / ``down_proj``.
"""
from __future__ import annotations

from .attention import HeadDim, kv_heads
from .config_primitives import merge_alias
from .declaration import LayerwisePrimitive
from .errors import ConversionError
from .llama import CARRIED
from .llama_weights import llama_rules
from .moe import QwenMoeLayers, qwen_moe_layer_rules
from .qwen3 import Qwen3Converter
from .rope import buildable_rotary

#: Qwen3MoeConfig defaults of the keys QwenMoeLayers reads
QWEN3_MOE_DEFAULTS = {
    "num_local_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": False,
    "intermediate_size": 6144, "hidden_act": "silu", "decoder_sparse_step": 1,
}


class UniformSlidingWindow(LayerwisePrimitive):
    """``use_sliding_window`` + ``sliding_window`` → the same window on every layer (or none).
    With no window, ``use_sliding_window=True`` beside ``sliding_window=null`` is kept in metadata;
    a window size while disabled is dropped as transformers drops it (it stores ``null``)."""

    native_paths = ("attention.window",)
    hf_keys = ("use_sliding_window", "sliding_window")
    window_default = 4096

    def import_(self, hf, num_layers):
        use = hf.get("use_sliding_window", False)
        if not isinstance(use, bool):
            raise ConversionError(f"config.json: use_sliding_window={use!r} must be a boolean")
        window = hf.get("sliding_window", self.window_default) if use else None
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise ConversionError(f"config.json: sliding_window={window!r} must be a positive integer or null")
        metadata = {"metadata.use_sliding_window": True} if use and window is None else {}
        return [{"attention.window": window}] * num_layers, metadata

    def export(self, layers, get_model):
        windows = sorted({block.attention.window for block in layers}, key=lambda w: -1 if w is None else w)
        if len(windows) > 1:
            raise ConversionError(f"attention.window differs between layers ({windows}); this format has one "
                                  "sliding_window for every layer")
        window = windows[0]
        if window is None:
            return {"use_sliding_window": get_model("metadata").get("use_sliding_window", False), "sliding_window": None}
        return {"use_sliding_window": True, "sliding_window": window}


class Qwen3MoeConverter(Qwen3Converter):
    model_type = "qwen3_moe"
    architecture = "Qwen3MoeForCausalLM"
    max_position_default = 32768
    carried = tuple(k for k in CARRIED if k != "pretraining_tp") + (
        "output_router_logits", "router_aux_loss_coef", "max_window_layers")

    def layer_section(self):
        return {
            **super().layer_section(),
            "kv_heads": kv_heads(4),
            "buildable_rotary": buildable_rotary(),
            "head_dim": HeadDim(),
            "window": UniformSlidingWindow(),
            "mlp": QwenMoeLayers(experts_key="num_local_experts", defaults=QWEN3_MOE_DEFAULTS, shared=False),
        }

    def canonical_hf(self, hf):
        return merge_alias(super().canonical_hf(hf), "num_experts", "num_local_experts")

    def weight_rules(self, cfg):
        return llama_rules(cfg, lambda i, block: qwen_moe_layer_rules(block, shared_expert=False))
