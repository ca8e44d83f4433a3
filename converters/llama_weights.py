"""Weight rules of the Llama family (Llama, Mistral, Qwen2, Qwen3): one function per layer.

Every optional tensor (biases, q/k norms) is declared from the native config, so the rules claim
exactly the tensors the config implies: a bias the config enables but the checkpoint lacks is a
missing tensor, and one the config does not enable is an extra tensor.
"""
from __future__ import annotations

import native
from native import BlockConfig

from .weights.rules import WeightRule, embedding_and_head, norm, rename, rotary_rows, split_gate_up, split_qkv, walk_layers


def attention_rules(block: BlockConfig, hf: str = "self_attn.", norm_offset: float = 0.0) -> list[WeightRule]:
    """q/k/v/o and q/k norms; ``norm_offset=1`` where HF stores q/k norm weights as ``multiplier - 1`` (Gemma3)."""
    a = block.attention
    rotary_dim = a.rotary.rotary_dim(a.head_dim)
    rules = [split_qkv("attn.qkv.weight", (f"{hf}q_proj.weight", f"{hf}k_proj.weight", f"{hf}v_proj.weight"),
                       heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim, rotary_dim=rotary_dim)]
    if a.q_bias:
        rules.append(rotary_rows("attn.q_bias", f"{hf}q_proj.bias", heads=a.heads, head_dim=a.head_dim, rotary_dim=rotary_dim))
    if a.k_bias:
        rules.append(rotary_rows("attn.k_bias", f"{hf}k_proj.bias", heads=a.kv_heads, head_dim=a.head_dim, rotary_dim=rotary_dim))
    if a.v_bias:
        rules.append(rename("attn.v_bias", f"{hf}v_proj.bias"))
    rules.append(rename("attn.o.weight", f"{hf}o_proj.weight"))
    if a.o_bias:
        rules.append(rename("attn.o.bias", f"{hf}o_proj.bias"))
    if a.qk_norm is not None:
        per_head = a.qk_norm_scope == "head"
        for name, heads in (("q", a.heads), ("k", a.kv_heads)):
            rules.append(rotary_rows(f"attn.{name}_norm.weight", f"{hf}{name}_norm.weight",
                                     heads=1 if per_head else heads, head_dim=a.head_dim, rotary_dim=rotary_dim,
                                     offset=norm_offset))
    return rules


def gated_mlp_rules(bias: bool, native_prefix: str = "mlp.", hf: str = "mlp.") -> list[WeightRule]:
    rules = [split_gate_up(f"{native_prefix}fc1.weight", (f"{hf}gate_proj.weight", f"{hf}up_proj.weight")),
             rename(f"{native_prefix}fc2.weight", f"{hf}down_proj.weight")]
    if bias:
        rules += [split_gate_up(f"{native_prefix}fc1.bias", (f"{hf}gate_proj.bias", f"{hf}up_proj.bias")),
                  rename(f"{native_prefix}fc2.bias", f"{hf}down_proj.bias")]
    return rules


def llama_layer_rules(i: int, block: BlockConfig) -> list[WeightRule]:
    return [
        norm("attn_norm.weight", "input_layernorm.weight"),
        *attention_rules(block),
        norm("mlp_norm.weight", "post_attention_layernorm.weight"),
        *gated_mlp_rules(block.mlp.bias),
    ]


def llama_rules(cfg: native.ModelConfig, layer_rules=llama_layer_rules) -> list[WeightRule]:
    return [
        *embedding_and_head(cfg.head.tied),
        *walk_layers(cfg.decoder.layers(), layer_rules),
        norm("final_norm.weight", "model.norm.weight"),
    ]
