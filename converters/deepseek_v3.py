"""DeepSeek-V3 (also DeepSeek-R1, Kimi-K2, Moonlight): multi-head latent attention with a q LoRA,
DeepSeekMoE with sigmoid scores, ``e_score_correction_bias``, group-limited routing (groups scored
by the sum of their two best experts) and ``routed_scaling_factor``; dense layers first.

transformers' ``DeepseekV3TopkRouter`` always routes that way: ``scoring_func`` and ``topk_method``
(in real configs, never read) are accepted only as ``"sigmoid"``/``"noaux_tc"`` and carried.
``rope_interleave`` (default true) says whether HF's rope rows are interleaved; it is carried and
read by the weight rules. ``num_nextn_predict_layers`` is carried; the MTP layers themselves are
converted when the checkpoint has them (see ``converters.deepseek``).
"""
from __future__ import annotations

from .config_primitives import merge_alias
from .config_values import read_bool, read_float, read_int
from .deepseek import DeepSeekConverter, DeepSeekLayers
from .errors import ConversionError

V3_DEFAULTS = {
    "num_attention_heads": 128, "num_key_value_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "first_k_dense_replace": 3,
    "hidden_act": "silu", "n_routed_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
    "n_shared_experts": 1, "intermediate_size": 18432, "n_group": 8, "topk_group": 4, "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
}
#: keys transformers ignores, accepted only with the value its implementation means
FIXED_MEANING = {"scoring_func": "sigmoid", "topk_method": "noaux_tc"}


class V3Layers(DeepSeekLayers):
    routing_keys = ("n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor")

    def routing_export(self, moe, metadata):
        for field, value, why in (("scoring", "sigmoid", "DeepSeek-V3 scores experts with a sigmoid"),
                                  ("score_bias", True, "DeepSeek-V3 always has e_score_correction_bias"),
                                  ("group_score", "top2_sum", "DeepSeek-V3 scores a group by its two best experts")):
            if getattr(moe, field) != value:
                raise ConversionError(f"mlp.{field}={getattr(moe, field)!r} cannot be expressed "
                                      f"(this format requires {value!r}): {why}")
        return {"n_group": moe.groups, "topk_group": moe.top_groups, "norm_topk_prob": moe.normalize_top_k,
                "routed_scaling_factor": moe.scaling_factor}

    def routing_import(self, hf):
        d = self.defaults
        return {"scoring": "sigmoid", "score_bias": True, "group_score": "top2_sum",
                "groups": read_int(hf, "n_group", d["n_group"], 1),
                "top_groups": read_int(hf, "topk_group", d["topk_group"], 1),
                "normalize_top_k": read_bool(hf, "norm_topk_prob", d["norm_topk_prob"]),
                "scaling_factor": read_float(hf, "routed_scaling_factor", d["routed_scaling_factor"])}, {}


class DeepseekV3Converter(DeepSeekConverter):
    model_type = "deepseek_v3"
    architecture = "DeepseekV3ForCausalLM"
    max_position_default = 4096
    hf_defaults = V3_DEFAULTS
    carried = DeepSeekConverter.carried + ("num_nextn_predict_layers", "rope_interleave", *FIXED_MEANING)

    def layers_primitive(self):
        return V3Layers(V3_DEFAULTS)

    def canonical_hf(self, hf):
        out = super().canonical_hf(hf)
        out = merge_alias(out, "num_mtp_layers", "num_nextn_predict_layers")
        out = merge_alias(out, "num_local_experts", "n_routed_experts")
        for key, meaning in FIXED_MEANING.items():
            if key in out and out[key] != meaning:
                raise ConversionError(f"config.json: {key}={out[key]!r} is not supported: transformers' "
                                      f"DeepseekV3 always routes as {key}={meaning!r}")
        if not isinstance(out.get("rope_interleave", True), bool):
            raise ConversionError(f"config.json: rope_interleave={out['rope_interleave']!r} must be a boolean")
        return out

    def rope_interleaved(self, cfg):
        return cfg.metadata.get("rope_interleave", True)
