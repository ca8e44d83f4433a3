"""DeepSeek-V2 (and V2-Lite, V2.5): multi-head latent attention (q LoRA optional: V2-Lite has
none), DeepSeekMoE with softmax scores, ``greedy`` or ``group_limited_greedy`` routing (groups scored
by their best expert) and ``routed_scaling_factor``; dense layers first. Rope rows are always
interleaved (transformers rotates them as complex pairs).

transformers' ``DeepseekV2TopkRouter`` never renormalises the top-k weights: ``norm_topk_prob=true``
(which DeepSeek's own code honours) is refused rather than silently changed; ``false`` is carried.
``scoring_func`` is accepted only as ``"softmax"`` and carried. With ``greedy`` routing ``n_group``
and ``topk_group`` are inert and carried.

transformers rotates the rope parts with ``view_as_complex`` on views of the projections: in float32
it fails for an odd ``qk_nope_head_dim`` or ``kv_lora_rank`` (odd strides); such configs are still
converted (they run in bfloat16 and float64), and the strategies draw even ones.
"""
from __future__ import annotations

from .config_primitives import merge_alias
from .config_values import read_bool, read_float, read_int
from .deepseek import DeepSeekConverter, DeepSeekLayers
from .errors import ConversionError

V2_DEFAULTS = {
    "num_attention_heads": 32, "num_key_value_heads": None, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "first_k_dense_replace": 0,
    "hidden_act": "silu", "n_routed_experts": 64, "num_experts_per_tok": None, "moe_intermediate_size": 1407,
    "n_shared_experts": 2, "intermediate_size": 11008, "routed_scaling_factor": 1.0,
}
GREEDY, GROUPED = "greedy", "group_limited_greedy"


class V2Layers(DeepSeekLayers):
    routing_keys = ("n_group", "topk_group", "topk_method", "norm_topk_prob", "routed_scaling_factor")

    def routing_export(self, moe, metadata):
        for field, value, why in (("scoring", "softmax", "DeepSeek-V2 scores experts with a softmax"),
                                  ("score_bias", False, "DeepSeek-V2 has no score correction bias"),
                                  ("group_score", "max", "DeepSeek-V2 scores a group by its best expert"),
                                  ("normalize_top_k", False, "transformers' DeepSeek-V2 never renormalises")):
            if getattr(moe, field) != value:
                raise ConversionError(f"mlp.{field}={getattr(moe, field)!r} cannot be expressed "
                                      f"(this format requires {value!r}): {why}")
        out = {"routed_scaling_factor": moe.scaling_factor}
        if "norm_topk_prob" in metadata:
            out["norm_topk_prob"] = metadata["norm_topk_prob"]
        if moe.groups > 1:
            out.update(topk_method=GROUPED, n_group=moe.groups, topk_group=moe.top_groups)
        else:
            out["topk_method"] = metadata.get("topk_method", GREEDY)
            out.update({key: metadata[key] for key in ("n_group", "topk_group") if key in metadata})
        return out

    def routing_import(self, hf):
        metadata = {}
        if read_bool(hf, "norm_topk_prob", False):
            raise ConversionError("config.json: norm_topk_prob=true is not supported: transformers' DeepseekV2 "
                                  "ignores it (it never renormalises the top-k weights)")
        if hf.has("norm_topk_prob"):
            metadata["metadata.norm_topk_prob"] = False
        method = hf.get("topk_method", GREEDY)
        if method == GREEDY:
            groups = top_groups = 1
            metadata.update({f"metadata.{key}": hf.get(key) for key in ("n_group", "topk_group") if hf.has(key)})
        elif method == GROUPED:
            groups, top_groups = read_int(hf, "n_group", None, 1), read_int(hf, "topk_group", None, 1)
            if groups == 1:  # one group: the same routing as greedy, spelled this way
                metadata.update({"metadata.topk_method": GROUPED, "metadata.n_group": 1, "metadata.topk_group": top_groups})
        else:
            raise ConversionError(f"config.json: topk_method={method!r} is not supported (supported: {GREEDY!r}, {GROUPED!r})")
        return {"scoring": "softmax", "score_bias": False, "group_score": "max", "groups": groups,
                "top_groups": top_groups, "normalize_top_k": False,
                "scaling_factor": read_float(hf, "routed_scaling_factor", self.defaults["routed_scaling_factor"])}, metadata


class DeepseekV2Converter(DeepSeekConverter):
    model_type = "deepseek_v2"
    architecture = "DeepseekV2ForCausalLM"
    max_position_default = 2048
    hf_defaults = V2_DEFAULTS
    carried = DeepSeekConverter.carried + ("scoring_func",)

    def layers_primitive(self):
        return V2Layers(V2_DEFAULTS)

    def canonical_hf(self, hf):
        out = super().canonical_hf(hf)
        out = merge_alias(out, "num_experts", "n_routed_experts")
        if out.get("scoring_func", "softmax") != "softmax":
            raise ConversionError(f"config.json: scoring_func={out['scoring_func']!r} is not supported: "
                                  "transformers' DeepseekV2 always scores with a softmax")
        return out

    def export_config(self, cfg):
        heads = {b.attention.heads for b in cfg.decoder.layers() if hasattr(b.attention, "heads")}
        for h in heads:
            if cfg.hidden_size % h:
                raise ConversionError(f"hidden_size={cfg.hidden_size} cannot be expressed with attention.heads={h}: "
                                      "DeepseekV2Config requires hidden_size divisible by num_attention_heads")
        return super().export_config(cfg)
