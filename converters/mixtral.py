"""Mixtral: Mistral with every MLP a sparse MoE (softmax router, top-k renormalised, no shared
expert), ``head_dim`` defaulting to ``null``, theta 1e6 and eps 1e-5 by default.

On disk (what ``save_pretrained`` writes and ``from_pretrained`` reads in transformers 5) the
experts are per expert: ``block_sparse_moe.experts.{e}.w1``/``w3`` (gate/up) and ``w2`` (down),
the router ``block_sparse_moe.gate``. In memory transformers fuses them (``mlp.experts.gate_up_proj``);
this converter targets the on-disk names.

``router_jitter_noise`` only acts in training mode and ``output_router_logits``/
``router_aux_loss_coef`` only shape the training loss: carried.
"""
from __future__ import annotations

from .activations import ACTIVATIONS
from .attention import HeadDim, kv_heads
from .config_primitives import ConstantImport, Dispatch, Mapped, Rename, Variant, merge_alias
from .llama_weights import attention_rules, llama_rules
from .mistral import MistralConverter
from .moe import moe_rules
from .rope import buildable_rotary
from .weights.rules import norm

_PREFIX = "block_sparse_moe."


def mixtral_layer_rules(i, block):
    return [
        norm("attn_norm.weight", "input_layernorm.weight"),
        *attention_rules(block),
        norm("mlp_norm.weight", "post_attention_layernorm.weight"),
        *moe_rules(block.mlp, router=f"{_PREFIX}gate.weight",
                   fc1=(f"{_PREFIX}experts.{{e}}.w1.weight", f"{_PREFIX}experts.{{e}}.w3.weight"),
                   fc2=f"{_PREFIX}experts.{{e}}.w2.weight"),
    ]


class MixtralConverter(MistralConverter):
    model_type = "mixtral"
    architecture = "MixtralForCausalLM"
    default_theta = 1e6
    norm_eps_default = 1e-5
    carried = MistralConverter.carried + ("output_router_logits", "router_aux_loss_coef", "router_jitter_noise")

    def layer_section(self):
        return {
            **super().layer_section(),
            "kv_heads": kv_heads(8),
            "buildable_rotary": buildable_rotary(),
            "head_dim": HeadDim(absent=None, null_is_default=True, explicit_for_rope=("longrope", "yarn", "dynamic")),
            "window": Rename("attention.window", "sliding_window", default=None),
            "mlp": Dispatch("mlp", "", (Variant("moe", None, self.moe_section()),)),
        }

    def moe_section(self):
        return {
            "experts": Rename("experts", "num_local_experts", default=8),
            "top_k": Rename("top_k", "num_experts_per_tok", default=2),
            "intermediate": Rename("intermediate", "intermediate_size", default=14336),
            "activation": Mapped("activation", "hidden_act", ACTIVATIONS, default="silu"),
            "normalize_top_k": ConstantImport("normalize_top_k", True, "Mixtral always renormalises the top-k weights"),
            "shared_intermediate": ConstantImport("shared_intermediate", None, "Mixtral has no shared expert"),
            "shared_gate": ConstantImport("shared_gate", False, "Mixtral has no shared expert"),
        }

    def canonical_hf(self, hf):
        return merge_alias(super().canonical_hf(hf), "num_experts", "num_local_experts")

    def weight_rules(self, cfg):
        return llama_rules(cfg, mixtral_layer_rules)
