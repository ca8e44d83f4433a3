"""OLMo2: Llama with post-norm blocks and an RMS q/k norm over the whole projection.

Checked against transformers 5 ``Olmo2Config``/``modeling_olmo2``:

- the block is ``h = x + post_attention_layernorm(attn(x)); y = h + post_feedforward_layernorm(mlp(h))``
  (native ``placement="post"``, ``attn_norm``/``mlp_norm``);
- ``q_norm``/``k_norm`` are ``Olmo2RMSNorm(heads * head_dim)``/``(kv_heads * head_dim)`` applied to
  the projection (after its bias) before the split into heads: native ``qk_norm_scope="full"``, eps
  ``rms_norm_eps``;
- ``attention_bias`` switches the q/k/v/o biases together; the MLP never has one;
- ``head_dim`` is read with ``getattr`` (default ``hidden_size // num_attention_heads``);
- rotary: any rope type, never partial (the default rope ignores ``partial_rotary_factor``).
"""
from __future__ import annotations

from .attention import HeadDim, bias_flag
from .config_primitives import ConstantImport
from .llama import ALL_ROPE_KINDS, CARRIED, LlamaConverter, rms_norm
from .llama_weights import attention_rules, gated_mlp_rules
from .weights.rules import embedding_and_head, norm, walk_layers


class Olmo2Converter(LlamaConverter):
    model_type = "olmo2"
    architecture = "Olmo2ForCausalLM"
    rope_kinds = ALL_ROPE_KINDS
    carried = tuple(k for k in CARRIED if k != "pretraining_tp")
    norm_eps_default = 1e-5
    max_position_default = 2048

    def layer_section(self):
        return {
            **super().layer_section(),
            "placement": ConstantImport("placement", "post", "OLMo2 normalises the sublayer outputs (post-norm)"),
            "bias": bias_flag("attention_bias"),
            "qk_norm": rms_norm("attention.qk_norm", "rms_norm_eps", self.norm_eps_default),
            "qk_norm_scope": ConstantImport("attention.qk_norm_scope", "full",
                                            "OLMo2 normalises q/k over the whole projection, not per head"),
            # Olmo2Config has no head_dim field (read with getattr, default hidden // heads): written
            # where it differs, where the heads do not divide hidden_size, or where config.json had it.
            "head_dim": HeadDim(),
        }

    def mlp_section(self):
        return {**super().mlp_section(), "bias": ConstantImport("bias", False, "OLMo2 MLPs have no bias")}

    def weight_rules(self, cfg):
        def layer(i, block):
            return [*attention_rules(block),
                    norm("attn_norm.weight", "post_attention_layernorm.weight"),
                    *gated_mlp_rules(False),
                    norm("mlp_norm.weight", "post_feedforward_layernorm.weight")]

        return [*embedding_and_head(cfg.head.tied),
                *walk_layers(cfg.decoder.layers(), layer),
                norm("final_norm.weight", "model.norm.weight")]
