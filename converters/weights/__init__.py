"""Declarative weight conversion: transforms with exact inverses, rules naming both sides, and a
streaming driver. See ``transforms`` (the primitives), ``rules`` (``WeightRule`` and factories,
shapes, coverage) and ``stream`` (``convert_stream``).

One Llama layer, declared with layer-relative names::

    from converters import weights as w

    def llama_layer(i, block):
        a = block.attention
        r = a.rotary.rotary_dim(a.head_dim)
        return [
            w.norm("attn_norm.weight", "input_layernorm.weight"),
            w.split_qkv("attn.qkv.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
                        heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim, rotary_dim=r),
            w.rename("attn.o.weight", "self_attn.o_proj.weight"),
            w.norm("mlp_norm.weight", "post_attention_layernorm.weight"),
            w.split_gate_up("mlp.fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
            w.rename("mlp.fc2.weight", "mlp.down_proj.weight"),
        ]

    rules = [*w.embedding_and_head(cfg.head.tied),
             *w.walk_layers(cfg.decoder.layers(), llama_layer),
             w.norm("final_norm.weight", "model.norm.weight")]
    hf_shapes = w.export_shapes(rules, native.state_shapes(cfg))
    for name, tensor in w.convert_stream(rules, state, "export", native.state_shapes(cfg)): ...
"""
from .rules import (
    TiedEmbedding, WeightRule, claimed_names, embedding_and_head, experts, export_shapes, fused_qkv,
    import_shapes, neox_qkv, neox_qkv_bias, norm, output_shapes, owned, rename, rotary_rows, split_gate_up,
    split_qkv, walk_layers,
)
from .stream import check_claims, convert_stream
from .transforms import (
    Chain, Chunk, Concat, ExpertSplit, GroupedQKV, HeadInterleave, Identity, NormOffset, Parallel,
    RotaryPermute, Transform, exact_offset_range, qkv_transform,
)

__all__ = [
    "Transform", "Identity", "Chain", "Parallel", "Chunk", "Concat", "GroupedQKV", "RotaryPermute",
    "HeadInterleave", "NormOffset", "ExpertSplit", "qkv_transform", "exact_offset_range",
    "WeightRule", "TiedEmbedding", "owned", "rename", "split_qkv", "fused_qkv", "neox_qkv", "neox_qkv_bias",
    "rotary_rows", "split_gate_up", "norm", "experts", "embedding_and_head", "walk_layers",
    "claimed_names", "export_shapes", "import_shapes", "output_shapes", "convert_stream", "check_claims",
]
