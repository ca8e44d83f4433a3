"""Qwen2-MoE: Qwen2 attention with one ``qkv_bias`` switch (o never biased), its own sliding-window
rule, and per-layer dense/sparse MLPs; every sparse layer has a shared expert scaled by
``sigmoid(shared_expert_gate(x))``.

On disk (``save_pretrained`` in transformers 5): ``mlp.gate`` (router), ``mlp.experts.{e}.gate_proj``
/ ``up_proj`` / ``down_proj``, ``mlp.shared_expert.*``, ``mlp.shared_expert_gate``; dense layers
``mlp.gate_proj`` / ``up_proj`` / ``down_proj``.

Sliding windows (``Qwen2MoeConfig.__post_init__``, transformers 5): ``sliding_window`` becomes 0
unless ``use_sliding_window``; absent ``layer_types`` are derived as sliding for *even* ``i`` below
``max_window_layers`` (not Qwen2's ``i >= max_window_layers``). Export always writes ``layer_types``.
"""
from __future__ import annotations

from .attention import ATTENTION_BIASES, HeadDim, bias_flag, kv_heads
from .config_primitives import ConstantImport
from .declaration import LayerwisePrimitive
from .errors import ConversionError
from .llama import CARRIED
from .llama_weights import llama_rules
from .moe import QwenMoeLayers, qwen_moe_layer_rules
from .qwen2 import Qwen2Converter
from .rope import buildable_rotary
from .sliding import FULL, SLIDING


#: Qwen2MoeConfig defaults of the keys QwenMoeLayers reads
QWEN2_MOE_DEFAULTS = {
    "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408, "norm_topk_prob": False,
    "shared_expert_intermediate_size": 5632, "intermediate_size": 5632, "hidden_act": "silu",
    "decoder_sparse_step": 1,
}


class Qwen2MoeSlidingWindows(LayerwisePrimitive):
    """``use_sliding_window``/``sliding_window``/``max_window_layers``/``layer_types`` ↔ per-layer
    ``attention.window``. Export: ``layer_types`` explicit, ``max_window_layers`` from metadata (it
    is then inert) or 28; with no sliding layer, ``use_sliding_window``/``sliding_window`` from
    metadata or ``False``/0 (what HF stores for a disabled window)."""

    native_paths = ("attention.window",)
    hf_keys = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")
    window_default = 4096
    max_window_layers_default = 28

    @staticmethod
    def derived_layer_types(num_layers: int, use: bool, max_window_layers: int) -> list[str]:
        return [SLIDING if (i + 1) % 2 and i < max_window_layers and use else FULL for i in range(num_layers)]

    def import_(self, hf, num_layers):
        use = hf.get("use_sliding_window", False)
        if not isinstance(use, bool):
            raise ConversionError(f"config.json: use_sliding_window={use!r} must be a boolean")
        window = hf.get("sliding_window", self.window_default)
        effective = window if use else 0  # Qwen2MoeConfig.__post_init__
        max_window_layers = hf.get("max_window_layers", self.max_window_layers_default)
        if not isinstance(max_window_layers, int) or isinstance(max_window_layers, bool):
            raise ConversionError(f"config.json: max_window_layers={max_window_layers!r} must be an integer")
        layer_types = hf.get("layer_types", None)
        if layer_types is None:
            layer_types = self.derived_layer_types(num_layers, use, max_window_layers)
        elif (not isinstance(layer_types, list) or len(layer_types) != num_layers
              or set(layer_types) - {SLIDING, FULL}):
            raise ConversionError(f"config.json: layer_types={layer_types!r} must list {num_layers} "
                                  f"entries of {FULL!r}/{SLIDING!r}")
        metadata = {}
        if max_window_layers != self.max_window_layers_default:
            metadata["metadata.max_window_layers"] = max_window_layers
        if SLIDING in layer_types:
            if not use:
                raise ConversionError("config.json: layer_types has sliding_attention layers but "
                                      "use_sliding_window is false (transformers then sets sliding_window=0)")
            if not isinstance(window, int) or isinstance(window, bool) or window < 1:
                raise ConversionError(f"config.json: sliding_window={window!r} must be a positive integer "
                                      "for sliding_attention layers")
        else:  # the window is inert: keep what transformers would keep
            if use:
                metadata["metadata.use_sliding_window"] = True
            if effective != 0:
                metadata["metadata.sliding_window"] = effective
        return [{"attention.window": window if kind == SLIDING else None} for kind in layer_types], metadata

    def export(self, layers, get_model):
        metadata = get_model("metadata")
        windows = [block.attention.window for block in layers]
        sizes = sorted({w for w in windows if w is not None})
        if len(sizes) > 1:
            raise ConversionError(f"attention.window differs between sliding layers ({sizes}); "
                                  "this format has one sliding_window")
        if sizes:
            use, window = True, sizes[0]
        else:
            use = metadata.get("use_sliding_window", False)
            window = metadata.get("sliding_window", 0) if use else 0
        return {
            "use_sliding_window": use,
            "sliding_window": window,
            "max_window_layers": metadata.get("max_window_layers", self.max_window_layers_default),
            "layer_types": [FULL if w is None else SLIDING for w in windows],
        }


class Qwen2MoeConverter(Qwen2Converter):
    model_type = "qwen2_moe"
    architecture = "Qwen2MoeForCausalLM"
    max_position_default = 32768
    carried = tuple(k for k in CARRIED if k != "pretraining_tp") + ("output_router_logits", "router_aux_loss_coef")

    def layer_section(self):
        return {
            **super().layer_section(),
            "kv_heads": kv_heads(16),
            "buildable_rotary": buildable_rotary(),
            "head_dim": HeadDim(),
            "bias": bias_flag("qkv_bias", ATTENTION_BIASES[:3], default=True),
            "o_bias": ConstantImport("attention.o_bias", False, "Qwen2-MoE has no o_proj bias"),
            "window": Qwen2MoeSlidingWindows(),
            "mlp": QwenMoeLayers(experts_key="num_experts", defaults=QWEN2_MOE_DEFAULTS, shared=True),
        }

    def weight_rules(self, cfg):
        return llama_rules(cfg, lambda i, block: qwen_moe_layer_rules(block, shared_expert=True))
