"""Weight rules of the Gemma family. As Llama's, except that Gemma2/3 blocks have four norms
(``sandwich`` placement). Every norm weight (block norms, the final norm and Gemma3's per-head q/k
norms) is HF's zero-centred ``w``, kept as it is: the native norms say so (``zero_centered``)."""
from __future__ import annotations

import native
from native import BlockConfig

from .llama_weights import attention_rules, gated_mlp_rules
from .weights.rules import WeightRule, embedding_and_head, norm, walk_layers

#: native sandwich norm ↔ HF Gemma2/3 decoder-layer norm
SANDWICH_NORMS = (
    ("attn_norm", "input_layernorm"),
    ("attn_post_norm", "post_attention_layernorm"),
    ("mlp_norm", "pre_feedforward_layernorm"),
    ("mlp_post_norm", "post_feedforward_layernorm"),
)
PRE_NORMS = (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"))


def gemma_layer_rules(i: int, block: BlockConfig) -> list[WeightRule]:
    norms = SANDWICH_NORMS if block.placement == "sandwich" else PRE_NORMS
    return [
        *(norm(f"{n}.weight", f"{h}.weight") for n, h in norms),
        *attention_rules(block),
        *gated_mlp_rules(False),
    ]


def gemma_rules(cfg: native.ModelConfig) -> list[WeightRule]:
    return [
        *embedding_and_head(cfg.head.tied),
        *walk_layers(cfg.decoder.layers(), gemma_layer_rules),
        norm("final_norm.weight", "model.norm.weight"),
    ]
