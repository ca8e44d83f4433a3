"""Weight rules of the Gemma family. As Llama's, except that every norm weight (block norms, the final
norm and Gemma3's per-head q/k norms) is stored by HF as ``multiplier - 1`` (``offset=1``), and
Gemma2/3 blocks have four norms (``sandwich`` placement)."""
from __future__ import annotations

import native
from native.config import BlockConfig

from .llama_weights import gated_mlp_rules
from .weights.rules import WeightRule, embedding_and_head, norm, rename, rotary_rows, split_qkv, walk_layers

#: native sandwich norm ↔ HF Gemma2/3 decoder-layer norm
SANDWICH_NORMS = (
    ("attn_norm", "input_layernorm"),
    ("attn_post_norm", "post_attention_layernorm"),
    ("mlp_norm", "pre_feedforward_layernorm"),
    ("mlp_post_norm", "post_feedforward_layernorm"),
)
PRE_NORMS = (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"))


def gemma_attention_rules(block: BlockConfig, hf: str = "self_attn.") -> list[WeightRule]:
    """q/k/v/o with Gemma's single ``attention_bias`` switch, and per-head q/k norms (Gemma3) stored
    as ``multiplier - 1`` in rotate_half row order."""
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
        for name in ("q", "k"):
            rules.append(rotary_rows(f"attn.{name}_norm.weight", f"{hf}{name}_norm.weight",
                                     heads=1, head_dim=a.head_dim, rotary_dim=rotary_dim, offset=1.0))
    return rules


def gemma_layer_rules(i: int, block: BlockConfig) -> list[WeightRule]:
    norms = SANDWICH_NORMS if block.placement == "sandwich" else PRE_NORMS
    return [
        *(norm(f"{n}.weight", f"{h}.weight", offset=1.0) for n, h in norms),
        *gemma_attention_rules(block),
        *gated_mlp_rules(False),
    ]


def gemma_rules(cfg: native.ModelConfig) -> list[WeightRule]:
    return [
        *embedding_and_head(cfg.head.tied),
        *walk_layers(cfg.decoder.layers(), gemma_layer_rules),
        norm("final_norm.weight", "model.norm.weight", offset=1.0),
    ]
