"""StarCoder2: Llama's attention with ``use_bias`` on every linear, LayerNorm (with bias) under
``norm_epsilon``, a plain (non-gated) ``c_fc``/``c_proj`` MLP, one optional sliding window, and a
tied head by default.

Checked against transformers 5 ``Starcoder2Config``/``modeling_starcoder2``:

- ``use_bias`` switches the biases of q/k/v/o *and* of ``c_fc``/``c_proj`` together;
- every norm is ``nn.LayerNorm(hidden, eps=norm_epsilon)`` (always with a bias);
- ``num_key_value_heads`` defaults to 2 (not to ``num_attention_heads``);
- ``head_dim`` is read with ``getattr`` (default ``hidden_size // num_attention_heads``);
- rotary: any rope type, never partial (``apply_rotary_pos_emb`` rotates the whole head);
- ``residual_dropout``/``embedding_dropout``/``attention_dropout`` act in training only: carried.

The LayerNorm helpers here are shared with GPT-NeoX.
"""
from __future__ import annotations

from native import BlockConfig, LayerNormConfig

from .activations import ACTIVATIONS
from .attention import HeadDim, bias_flag
from .config_primitives import ConstantImport, Dispatch, Mapped, Optional, Rename, Variant
from .llama import ALL_ROPE_KINDS, LlamaConverter
from .llama_weights import attention_rules
from .weights.rules import WeightRule, embedding_and_head, rename, walk_layers

CARRIED = ("bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache",
           "attention_dropout", "residual_dropout", "embedding_dropout")

BIAS_PATHS = ("attention.q_bias", "attention.k_bias", "attention.v_bias", "attention.o_bias", "mlp.bias")


def layer_norm(native_path: str, eps_key: str, default) -> Dispatch:
    """A norm section that must be a LayerNorm with bias (``nn.LayerNorm``), eps under ``eps_key``."""
    return Dispatch(native_path, "", (Variant("layer_norm", None, {
        "eps": Rename("eps", eps_key, default=default),
        "bias": ConstantImport("bias", True, "nn.LayerNorm always has a bias"),
    }),))


def layer_norm_rules(native: str, hf: str, norm) -> list[WeightRule]:
    """A LayerNorm's weight and (when the config has one) bias: plain renames."""
    rules = [rename(f"{native}.weight", f"{hf}.weight")]
    if isinstance(norm, LayerNormConfig) and norm.bias:
        rules.append(rename(f"{native}.bias", f"{hf}.bias"))
    return rules


class Starcoder2Converter(LlamaConverter):
    model_type = "starcoder2"
    architecture = "Starcoder2ForCausalLM"
    rope_kinds = ALL_ROPE_KINDS
    carried = CARRIED
    norm_eps_default = 1e-5
    max_position_default = 4096

    def model_section(self):
        return {
            **super().model_section(),
            "tied": Rename("head.tied", "tie_word_embeddings", default=True),
            "final_norm": layer_norm("final_norm", "norm_epsilon", self.norm_eps_default),
        }

    def layer_section(self):
        return {
            **super().layer_section(),
            "norm": layer_norm("norm", "norm_epsilon", self.norm_eps_default),
            "kv_heads": Rename("attention.kv_heads", "num_key_value_heads", default=2),
            "bias": bias_flag("use_bias", BIAS_PATHS, default=True),
            "window": Optional("attention.window", "sliding_window", write_sentinel=True),
            # Starcoder2Config has no head_dim field (the model reads it with getattr, defaulting to
            # hidden // heads): written where it differs from that, where the heads do not divide
            # hidden_size (convcheck convert refuses the floored default), or where config.json had it.
            "head_dim": HeadDim(),
        }

    def mlp_section(self):
        # the bias is claimed by ``use_bias`` in the layer section (one flag for every linear)
        return {
            "intermediate": Rename("intermediate", "intermediate_size"),
            "gated": ConstantImport("gated", False, "StarCoder2's MLP is plain c_fc -> act -> c_proj"),
            "activation": Mapped("activation", "hidden_act", ACTIVATIONS, default="gelu_pytorch_tanh"),
        }

    def weight_rules(self, cfg):
        def layer(i: int, block: BlockConfig) -> list[WeightRule]:
            rules = [*layer_norm_rules("attn_norm", "input_layernorm", block.norm),
                     *attention_rules(block),
                     *layer_norm_rules("mlp_norm", "post_attention_layernorm", block.norm),
                     rename("mlp.fc1.weight", "mlp.c_fc.weight")]
            if block.mlp.bias:
                rules.append(rename("mlp.fc1.bias", "mlp.c_fc.bias"))
            rules.append(rename("mlp.fc2.weight", "mlp.c_proj.weight"))
            if block.mlp.bias:
                rules.append(rename("mlp.fc2.bias", "mlp.c_proj.bias"))
            return rules

        return [*embedding_and_head(cfg.head.tied),
                *walk_layers(cfg.decoder.layers(), layer),
                *layer_norm_rules("final_norm", "model.norm", cfg.final_norm)]
