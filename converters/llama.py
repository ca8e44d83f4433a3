"""Llama: the parent declaration of the family (Mistral, Qwen2, Qwen3 override it by key)."""
from __future__ import annotations

from .activations import ACTIVATIONS
from .base import Converter
from .config_primitives import (
    Carried,
    ConstantImport,
    Default,
    Dispatch,
    Mapped,
    Rename,
    Variant,
)
from .attention import bias_flag, default_head_dim, kv_heads
from .rope import buildable_rotary, rotary_dispatch

#: HF keys that do not change the forward pass, carried through native metadata
CARRIED = ("bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "attention_dropout",
           "use_cache", "pretraining_tp")

ALL_ROPE_KINDS = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


def rms_norm(native_path: str, eps_key: str, default, zero_centered: bool = False) -> Dispatch:
    """A norm section that must be RMSNorm, its eps under ``eps_key``; its gain stored as it is
    (``zero_centered=False``) or as the offset from 1 (Gemma: ``True``), whichever the format fixes."""
    centred = ConstantImport("zero_centered", zero_centered,
                             "this format stores norm weights as the offset w of a gain 1 + w" if zero_centered
                             else "this format stores norm weights as the gain itself")
    return Dispatch(native_path, "", (Variant("rms_norm", None, {"eps": Rename("eps", eps_key, default=default),
                                                                 "zero_centered": centred}),))


class LlamaConverter(Converter):
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    rope_kinds = ALL_ROPE_KINDS
    carried = CARRIED
    norm_eps_default = 1e-6
    norm_zero_centered = False  # HF stores the gain itself (Gemma: its offset from 1)
    max_position_default = 2048
    kv_heads_default: int | None = None  # LlamaConfig: absent num_key_value_heads → num_attention_heads
    kv_null_is_heads = True

    def model_section(self):
        return {
            **super().model_section(),
            "hidden_size": Rename("hidden_size", "hidden_size"),
            "max_position_embeddings": Rename("max_position_embeddings", "max_position_embeddings",
                                              default=self.max_position_default),
            "vocab_size": Rename("embeddings.vocab_size", "vocab_size"),
            "multiplier": ConstantImport("embeddings.multiplier", None, "no embedding multiplier"),
            "tied": Rename("head.tied", "tie_word_embeddings", default=False),
            "final_softcap": ConstantImport("head.final_softcap", None, "no final logit softcapping"),
            "final_norm": rms_norm("final_norm", "rms_norm_eps", self.norm_eps_default, self.norm_zero_centered),
            "carried": Carried(self.carried),
        }

    def layer_section(self):
        return {
            "placement": ConstantImport("placement", "pre", "pre-norm only"),
            "norm": rms_norm("norm", "rms_norm_eps", self.norm_eps_default, self.norm_zero_centered),
            "heads": Rename("attention.heads", "num_attention_heads"),
            "kv_heads": kv_heads(self.kv_heads_default, self.kv_null_is_heads),
            "head_dim": Default("attention.head_dim", "head_dim", default_head_dim),
            "bias": bias_flag("attention_bias"),
            "qk_norm": ConstantImport("attention.qk_norm", None, "no q/k norm"),
            "qk_norm_scope": ConstantImport("attention.qk_norm_scope", "head"),
            "softmax_scale": ConstantImport("attention.softmax_scale", None, "softmax scale is head_dim**-0.5"),
            "logit_softcap": ConstantImport("attention.logit_softcap", None, "no attention softcapping"),
            "window": ConstantImport("attention.window", None, "no sliding window"),
            "rotary": rotary_dispatch(self.rope_kinds),
            "buildable_rotary": buildable_rotary(),
            "mlp": Dispatch("mlp", "", (Variant("mlp", None, self.mlp_section()),)),
        }

    def mlp_section(self):
        return {
            "intermediate": Rename("intermediate", "intermediate_size"),
            "gated": ConstantImport("gated", True, "gated MLP only"),
            "activation": Mapped("activation", "hidden_act", ACTIVATIONS, default="silu"),
            "bias": Rename("bias", "mlp_bias", default=False),
        }

    def weight_rules(self, cfg):
        from .llama_weights import llama_rules

        return llama_rules(cfg)
