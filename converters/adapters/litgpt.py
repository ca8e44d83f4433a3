"""LitGPT (PyPI ``litgpt``) as a convcheck adapter: convcheck's HF-side laws over LitGPT's own
converters and model.

Install (two steps: litgpt 0.5.13 pins ``huggingface-hub<1.4`` in its metadata, which conflicts
with transformers 5.23; the modules used here run with huggingface_hub 2.4)::

    pip install -c constraints.txt -e .[litgpt]
    pip install --no-deps litgpt==0.5.13

Then ``convcheck gate --adapter litgpt``.

How LitGPT is driven (the way its users drive it):

- **config**: LitGPT never reads ``config.json``; its tooling picks a *named* config from
  ``litgpt.config.configs`` by the checkpoint's repository name (``Config.from_name``). For an HF
  dict this adapter picks the named config of the matching family whose architectural choices
  (norm class, MLP class, biases, parallel residual, rotary style, tied head, sliding window,
  softcapping, ...) are the HF dict's, and overrides only sizes and numbers, as LitGPT's own tests
  scale named configs down (``Config.from_name(name, n_layer=..., n_embd=...)``). An HF setting no
  named config of the family expresses raises :class:`NotRepresentable` naming the HF key.
  Two HF settings are deliberately *not* refused, because LitGPT ships a named config for the real
  checkpoint that has them and its users get that config: ``rope_type: longrope`` (Phi-3-mini-128k,
  Phi-3.5-mini, Phi-4-mini; LitGPT's configs for them have no rope scaling). What LitGPT then
  runs is what the forward law checks. Qwen3-MoE's ``norm_topk_prob`` goes to LitGPT's own
  ``Config.norm_topk_prob`` field.
- **weights**: ``litgpt.scripts.convert_hf_checkpoint.copy_weights_*`` (import) and
  ``litgpt.scripts.convert_lit_checkpoint.copy_weights_*`` (export), chosen and called as
  ``convert_hf_checkpoint`` / ``convert_lit_checkpoint`` choose and call them (by config name).
- **forward**: ``litgpt.GPT(config)`` with the imported state, strict ``load_state_dict``.
- **export_config** is adapter glue, not LitGPT code (LitGPT has no config exporter: its users
  copy the original ``config.json`` next to the exported weights). It starts from that carried
  ``config.json`` and rewrites every key LitGPT's ``Config`` models from the ``Config`` itself, so
  the config laws test the pairing of the named config + overrides with the HF dict.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from . import Adapter, NotRepresentable

#: model_type -> how to pick the named config. Families LitGPT 0.5.13 has named configs and copy
#: functions for; convcheck architectures absent here (qwen2_moe, starcoder2, deepseek_v2/v3) have
#: neither in LitGPT 0.5.13.
MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2",
               "gemma3_text", "phi3", "gpt_neox", "olmo2")

#: HF keys that describe the checkpoint, the tokenizer or training, not the function the model
#: computes at inference: carried verbatim in the kept config.json, never refused.
METADATA_KEYS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "initializer_range", "attention_dropout", "embd_pdrop", "resid_pdrop",
    "hidden_dropout", "classifier_dropout", "output_router_logits", "router_aux_loss_coef",
    "router_jitter_noise", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "dtype", "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "architectures",
    "id2label", "label2id", "problem_type", "tokenizer_class", "prefix", "task_specific_params",
    "transformers_version", "_name_or_path", "model_type", "tie_word_embeddings", "is_decoder",
    "pretraining_tp", "max_window_layers",
    # how the tensors are stored (FP8 blocks), not what they compute: convcheck's streaming layer
    # hands adapters plain tensors, and LitGPT's copy functions copy whatever they are given
    "quantization_config",
})


@dataclasses.dataclass
class LitConfig:
    """The foreign config: the LitGPT ``Config`` plus what a LitGPT checkpoint directory keeps."""

    model_type: str
    name: str  # the named config it was built from
    config: Any  # litgpt.Config
    hf: dict  # the original config.json (kept by LitGPT's checkpoint dir; users copy it back)
    tied: bool  # tie_word_embeddings of the HF checkpoint

    def __repr__(self) -> str:
        return f"LitConfig({self.model_type}, {self.name!r})"


def _hf_object(hf: Mapping[str, Any]):
    from transformers import AutoConfig

    return AutoConfig.for_model(**copy.deepcopy(dict(hf)))


def _rope(obj) -> dict:
    rope = getattr(obj, "rope_parameters", None) or {}
    return dict(rope)


class LitGPTAdapter(Adapter):
    name = "litgpt"
    model_types = MODEL_TYPES

    # ---------------------------------------------------------------------------------- config
    def import_config(self, hf: dict[str, Any]) -> LitConfig:
        from litgpt import Config

        mt = hf.get("model_type")
        if mt not in MODEL_TYPES:
            raise NotRepresentable("model_type", f"LitGPT 0.5.13 has no named config for {mt!r}")
        obj = _hf_object(hf)
        default = _hf_object({"model_type": mt}).to_dict()
        given = obj.to_dict()
        tied = bool(getattr(obj, "tie_word_embeddings", False))
        name, sizes, read = getattr(self, f"_pick_{mt}")(obj, tied)
        read = set(read) | {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                            "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                            "layer_norm_eps", "rope_parameters", "head_dim"}
        # every other key transformers' config class knows must be at its default: LitGPT's named
        # configs of this family have no setting for it
        for key, value in given.items():
            if key in read or key in METADATA_KEYS or key not in default:
                continue
            if value != default[key]:
                raise NotRepresentable(key, f"{value!r} (default {default[key]!r}): no LitGPT {mt} named config expresses it")
        config = Config.from_name(name, **sizes)
        return LitConfig(mt, name, config, copy.deepcopy(dict(hf)), tied)

    @staticmethod
    def _common(obj, eps_key: str = "rms_norm_eps") -> dict[str, Any]:
        n_head = obj.num_attention_heads
        head = getattr(obj, "head_dim", None) or obj.hidden_size // n_head
        rope = _rope(obj)
        return dict(
            n_layer=obj.num_hidden_layers, n_embd=obj.hidden_size, n_head=n_head,
            n_query_groups=getattr(obj, "num_key_value_heads", None) or n_head, head_size=head,
            intermediate_size=obj.intermediate_size, vocab_size=obj.vocab_size,
            padded_vocab_size=obj.vocab_size, block_size=obj.max_position_embeddings,
            norm_eps=getattr(obj, eps_key), rope_base=rope.get("rope_theta", 10000.0),
        )

    @staticmethod
    def _refuse_rope(rope: dict, allowed=("default",), key="rope_parameters.rope_type") -> str:
        kind = rope.get("rope_type", "default")
        if kind not in allowed:
            raise NotRepresentable(key, f"{kind!r}: no LitGPT named config of this family uses it")
        return kind

    @staticmethod
    def _act(obj, expected: str, key: str = "hidden_act") -> None:
        value = getattr(obj, key, None)
        if value != expected:
            raise NotRepresentable(key, f"{value!r}: LitGPT's named configs of this family use {expected!r}")

    @staticmethod
    def _partial(rope: dict, allowed: float | None = 1.0) -> float:
        fraction = rope.get("partial_rotary_factor", 1.0)
        if allowed is not None and fraction != allowed:
            raise NotRepresentable("rope_parameters.partial_rotary_factor",
                                   f"{fraction!r}: LitGPT's named configs of this family rotate whole heads")
        return fraction

    def _default_rope(self, obj, activation: str | None = None, activation_key: str = "hidden_act") -> None:
        """What most families' named configs fix: the default rope over whole heads, and one
        activation."""
        rope = _rope(obj)
        self._refuse_rope(rope)
        self._partial(rope)
        if activation is not None:
            self._act(obj, activation, activation_key)

    def _llama3(self, rope: dict) -> dict:
        return dict(factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                    high_freq_factor=rope["high_freq_factor"],
                    original_max_seq_len=rope["original_max_position_embeddings"])

    def _pick_llama(self, obj, tied):
        rope = _rope(obj)
        kind = self._refuse_rope(rope, ("default", "llama3"))
        self._partial(rope)
        self._act(obj, "silu")
        for key in ("attention_bias", "mlp_bias"):
            if getattr(obj, key):
                raise NotRepresentable(key, "no LitGPT Llama named config has biases")
        sizes = self._common(obj)
        if kind == "llama3":
            return "Llama-3.1-8B", {**sizes, "rope_adjustments": self._llama3(rope)}, ()
        return ("Llama-3.2-1B" if tied else "Llama-3-8B"), {**sizes, "rope_adjustments": None}, ()

    def _pick_mistral(self, obj, tied):
        self._default_rope(obj, "silu")
        sizes = self._common(obj)
        if obj.sliding_window is not None:
            return "Mistral-7B-v0.1", {**sizes, "sliding_window_size": obj.sliding_window}, ("sliding_window",)
        return "Mistral-7B-v0.3", sizes, ("sliding_window",)

    def _pick_mixtral(self, obj, tied):
        self._default_rope(obj, "silu")
        if obj.sliding_window is not None:
            raise NotRepresentable("sliding_window", "LitGPT's Mixtral named configs have no sliding window")
        sizes = self._common(obj)
        return "Mixtral-8x7B-v0.1", {**sizes, "n_expert": obj.num_local_experts,
                                     "n_expert_per_token": obj.num_experts_per_tok}, \
            ("num_local_experts", "num_experts_per_tok")

    def _qwen_window(self, obj):
        if getattr(obj, "use_sliding_window", False):
            raise NotRepresentable("use_sliding_window", "LitGPT's Qwen named configs have no sliding window")

    def _pick_qwen2(self, obj, tied):
        self._default_rope(obj, "silu")
        self._qwen_window(obj)
        return "Qwen2.5-0.5B" if tied else "Qwen2.5-7B", self._common(obj), \
            ("sliding_window", "layer_types", "use_sliding_window")

    def _pick_qwen3(self, obj, tied):
        self._default_rope(obj, "silu")
        self._qwen_window(obj)
        return "Qwen3-0.6B" if tied else "Qwen3-8B", self._common(obj), \
            ("sliding_window", "layer_types", "use_sliding_window")

    def _pick_qwen3_moe(self, obj, tied):
        self._default_rope(obj, "silu")
        self._qwen_window(obj)
        if obj.mlp_only_layers:
            raise NotRepresentable("mlp_only_layers", "LitGPT's Qwen3 MoE named configs are MoE in every layer")
        if obj.decoder_sparse_step != 1:
            raise NotRepresentable("decoder_sparse_step", "LitGPT's Qwen3 MoE named configs are MoE in every layer")
        if not obj.num_local_experts:
            raise NotRepresentable("num_local_experts", "0 (a dense qwen3_moe): LitGPT's Qwen3 MoE configs route to experts")
        sizes = {**self._common(obj), "n_expert": obj.num_local_experts,
                 "n_expert_per_token": obj.num_experts_per_tok,
                 "moe_intermediate_size": obj.moe_intermediate_size,
                 "norm_topk_prob": bool(obj.norm_topk_prob)}
        return "Qwen3-30B-A3B", sizes, ("sliding_window", "use_sliding_window", "num_local_experts",
                                        "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                                        "mlp_only_layers", "decoder_sparse_step")

    def _pick_gemma(self, obj, tied):
        self._default_rope(obj)
        act = getattr(obj, "hidden_activation", None) or obj.hidden_act
        if act != "gelu_pytorch_tanh":
            raise NotRepresentable("hidden_activation", f"{act!r}: LitGPT's Gemma configs use tanh-approximate GELU")
        return "Gemma-7b", self._common(obj), ("hidden_act", "hidden_activation")

    def _layer_windows(self, obj) -> list[int]:
        return [1 if t == "sliding_attention" else 0 for t in obj.layer_types]

    def _pick_gemma2(self, obj, tied):
        self._default_rope(obj, "gelu_pytorch_tanh", "hidden_activation")
        sizes = {**self._common(obj), "attention_scores_scalar": obj.query_pre_attn_scalar,
                 "attention_logit_softcapping": obj.attn_logit_softcapping,
                 "final_logit_softcapping": obj.final_logit_softcapping,
                 "sliding_window_size": obj.sliding_window, "sliding_window_indices": self._layer_windows(obj)}
        return "Gemma-2-2b", sizes, ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                                     "sliding_window", "layer_types")

    def _pick_gemma3_text(self, obj, tied):
        ropes = _rope(obj)
        full = dict(ropes.get("full_attention", ropes))
        local = dict(ropes.get("sliding_attention", full))
        kind = self._refuse_rope(full, ("default", "linear"), "rope_parameters.full_attention.rope_type")
        self._refuse_rope(local, ("default",), "rope_parameters.sliding_attention.rope_type")
        self._partial(full)
        self._partial(local)
        self._act(obj, "gelu_pytorch_tanh", "hidden_activation")
        if obj.attn_logit_softcapping is not None or obj.final_logit_softcapping is not None:
            raise NotRepresentable("attn_logit_softcapping" if obj.attn_logit_softcapping is not None
                                   else "final_logit_softcapping", "LitGPT's Gemma-3 configs have no softcapping")
        windows = self._layer_windows(obj)
        sizes = {**self._common(obj), "rope_base": full.get("rope_theta", 10000.0),
                 "rope_local_base_freq": local.get("rope_theta", 10000.0), "rope_indices": windows,
                 "attention_scores_scalar": obj.query_pre_attn_scalar,
                 "sliding_window_size": obj.sliding_window, "sliding_window_indices": windows}
        if kind == "linear":
            return "Gemma-3-4b-it", {**sizes, "rope_adjustments": {"factor": full["factor"]}}, \
                ("query_pre_attn_scalar", "sliding_window", "layer_types", "_sliding_window_pattern")
        return "Gemma-3-1b-it", {**sizes, "rope_adjustments": None}, \
            ("query_pre_attn_scalar", "sliding_window", "layer_types", "_sliding_window_pattern")

    def _pick_phi3(self, obj, tied):
        rope = _rope(obj)
        # longrope is LitGPT's named config for Phi-3-mini-128k / Phi-3.5-mini / Phi-4-mini
        kind = self._refuse_rope(rope, ("default", "longrope"))
        fraction = self._partial(rope, None)
        self._act(obj, "silu")
        sizes = {**self._common(obj), "rotary_percentage": fraction}
        read = ("sliding_window", "original_max_position_embeddings")
        window = {"sliding_window_size": obj.sliding_window} if obj.sliding_window is not None else {}
        if tied:  # the tied Phi-3 family member is Phi-4-mini (convert_* tie by the name "Phi-4")
            return "Phi-4-mini-instruct", {**sizes, "sliding_window_size": obj.sliding_window}, read
        if fraction != 1.0:
            raise NotRepresentable("rope_parameters.partial_rotary_factor",
                                   "LitGPT's untied Phi-3 named configs rotate whole heads")
        if kind == "longrope":
            return "Phi-3-mini-128k-instruct", {**sizes, "sliding_window_size": obj.sliding_window}, read
        if window:
            return "Phi-3-mini-4k-instruct", {**sizes, **window}, read
        return "Phi-3.5-mini-instruct", sizes, read

    def _pick_gpt_neox(self, obj, tied):
        rope = _rope(obj)
        self._refuse_rope(rope)
        fraction = self._partial(rope, None)
        self._act(obj, "gelu")
        if not obj.use_parallel_residual:
            raise NotRepresentable("use_parallel_residual", "LitGPT's GPT-NeoX (Pythia) configs are parallel-residual")
        if not obj.attention_bias:
            raise NotRepresentable("attention_bias", "LitGPT's Pythia configs have attention biases")
        sizes = {**self._common(obj, "layer_norm_eps"), "rotary_percentage": fraction}
        return "pythia-14m", sizes, ("use_parallel_residual", "attention_bias", "hidden_act", "rotary_pct")

    def _pick_olmo2(self, obj, tied):
        self._default_rope(obj, "silu")
        if obj.attention_bias:
            raise NotRepresentable("attention_bias", "LitGPT's OLMo-2 configs have no biases")
        return "OLMo-2-1124-7B", self._common(obj), ()

    # --------------------------------------------------------------------------------- export
    def export_config(self, foreign: LitConfig) -> dict[str, Any]:
        """Adapter glue, not LitGPT: the carried config.json with every key LitGPT's ``Config``
        models rewritten from the ``Config``."""
        c = foreign.config
        hf = copy.deepcopy(foreign.hf)
        mt = foreign.model_type
        hf["model_type"] = mt
        hf["num_hidden_layers"] = c.n_layer
        hf["hidden_size"] = c.n_embd
        hf["num_attention_heads"] = c.n_head
        if mt != "gpt_neox":
            hf["num_key_value_heads"] = c.n_query_groups
        if hf.get("head_dim") is not None or c.head_size != c.n_embd // c.n_head:  # a null head_dim stays null
            hf["head_dim"] = c.head_size
        hf["intermediate_size"] = c.intermediate_size
        hf["vocab_size"] = c.padded_vocab_size
        hf["max_position_embeddings"] = c.block_size
        hf["layer_norm_eps" if mt == "gpt_neox" else "rms_norm_eps"] = c.norm_eps
        if c.n_expert:
            hf["num_local_experts"] = c.n_expert
            hf["num_experts_per_tok"] = c.n_expert_per_token
        if mt == "qwen3_moe":
            hf["moe_intermediate_size"] = c.moe_intermediate_size
            hf["norm_topk_prob"] = c.norm_topk_prob
        if mt in ("gemma2", "gemma3_text"):
            hf["query_pre_attn_scalar"] = c.attention_scores_scalar
            hf["sliding_window"] = c.sliding_window_size
            hf["layer_types"] = ["sliding_attention" if w else "full_attention" for w in c.sliding_window_indices]
        if mt == "gemma2":
            hf["attn_logit_softcapping"] = c.attention_logit_softcapping
            hf["final_logit_softcapping"] = c.final_logit_softcapping
        if mt in ("mistral", "phi3"):
            hf["sliding_window"] = c.sliding_window_size
        # rope: rewrite theta (and the LitGPT-modelled scaling) in whichever form the file used
        if mt == "gemma3_text":
            self._export_gemma3_rope(hf, c)
        else:
            theta = c.rope_base
            legacy = [k for k in ("rope_theta", "rotary_emb_base") if k in hf]
            if isinstance(hf.get("rope_parameters"), dict):
                rope = hf["rope_parameters"] = {**hf["rope_parameters"], "rope_theta": theta}
            elif legacy or isinstance(hf.get("rope_scaling"), dict):
                hf[legacy[0] if legacy else "rope_theta"] = theta
                rope = hf.get("rope_scaling") if isinstance(hf.get("rope_scaling"), dict) else None
            else:
                rope = hf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
            if c.rope_adjustments and rope is not None and "low_freq_factor" in c.rope_adjustments:
                rope.update(factor=c.rope_adjustments["factor"], low_freq_factor=c.rope_adjustments["low_freq_factor"],
                            high_freq_factor=c.rope_adjustments["high_freq_factor"],
                            original_max_position_embeddings=c.rope_adjustments["original_max_seq_len"])
            if mt in ("phi3", "gpt_neox"):
                self._export_fraction(hf, mt, c.rotary_percentage)
        return hf

    @staticmethod
    def _export_fraction(hf: dict, mt: str, fraction: float) -> None:
        legacy = "rotary_pct" if mt == "gpt_neox" else "partial_rotary_factor"
        rope = hf.get("rope_parameters")
        if legacy in hf:
            hf[legacy] = fraction
        elif isinstance(rope, dict) and ("partial_rotary_factor" in rope or fraction != 1.0):
            rope["partial_rotary_factor"] = fraction
        elif fraction != 1.0:
            hf[legacy] = fraction

    @staticmethod
    def _export_gemma3_rope(hf: dict, c) -> None:
        """Gemma-3's two rope dicts, written in transformers' per-layer-type form (the form its
        config class reads every older spelling into)."""
        ropes = copy.deepcopy(dict(_hf_object(hf).rope_parameters))
        for key in ("rope_theta", "rope_scaling", "rope_local_base_freq"):
            hf.pop(key, None)
        ropes["full_attention"]["rope_theta"] = c.rope_base
        ropes["sliding_attention"]["rope_theta"] = c.rope_local_base_freq
        if c.rope_adjustments:
            ropes["full_attention"]["factor"] = c.rope_adjustments["factor"]
        hf["rope_parameters"] = ropes

    # -------------------------------------------------------------------------------- weights
    def import_weights(self, foreign: LitConfig, hf_tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``convert_hf_checkpoint``'s choice of copy function, called as it calls it (one file)."""
        from litgpt.scripts import convert_hf_checkpoint as h

        config, model_name = foreign.config, foreign.name
        lower = model_name.lower()
        if "falcon" in model_name:
            copy_fn = partial(h.copy_weights_falcon, config)
        elif lower.startswith("gemma-2"):
            copy_fn = partial(h.copy_weights_gemma_2, {})
        elif lower.startswith("gemma-3"):
            copy_fn = partial(h.copy_weights_gemma_3, {}, config=config)
        elif lower.startswith("phi"):
            copy_fn = partial(h.copy_weights_phi, config, {})
        elif lower.startswith(("qwen2.5", "qwq")):
            copy_fn = partial(h.copy_weights_qwen_2_5, config, {})
        elif lower.startswith("olmo-2-"):
            copy_fn = partial(h.copy_weights_olmo2, config, {})
        elif lower.startswith("qwen3"):
            copy_fn = partial(h.copy_weights_qwen_3, config, {})
        elif config.mlp_class_name in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE"):
            copy_fn = partial(h.copy_weights_hf_llama, config, {})
        else:
            copy_fn = partial(h.copy_weights_gpt_neox, config)
        sd: dict[str, torch.Tensor] = {}
        # (convert_hf_checkpoint runs under torch.inference_mode and then saves to disk; here the
        # state stays in memory, so ordinary tensors stand for the reloaded file)
        copy_fn(sd, dict(hf_tensors), saver=None, dtype=None, pbar=None, progress_per_file=None, debug_mode=False)
        return sd

    def export_weights(self, foreign: LitConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``convert_lit_checkpoint``'s choice of copy function, called as it calls it."""
        from litgpt.scripts import convert_lit_checkpoint as l

        config = foreign.config
        if "falcon" in config.name:
            copy_fn = partial(l.copy_weights_falcon, config)
        elif config.name.startswith("Gemma-2"):
            copy_fn = partial(l.copy_weights_gemma_2, config)
        elif config.name.startswith("Gemma-3"):
            copy_fn = partial(l.copy_weights_gemma_3, config)
        elif config.name.lower().startswith("phi"):
            copy_fn = partial(l.copy_weights_phi, config)
        elif config.name.lower().startswith(("qwen2.5", "qwq")):
            copy_fn = partial(l.copy_weights_qwen_2_5, config)
        elif config.name.lower().startswith("olmo-2-"):
            copy_fn = partial(l.copy_weights_olmo2, config)
        elif config.name.lower().startswith("qwen3"):
            copy_fn = partial(l.copy_weights_qwen_3, config)
        elif config.mlp_class_name in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE"):
            copy_fn = partial(l.copy_weights_llama, config, untie_weights="Gemma" in config.name)
        else:
            copy_fn = partial(l.copy_weights_gpt_neox, config)
        lit_weights = dict(state)
        lit_weights = lit_weights.get("model", lit_weights)
        l.check_conversion_supported(lit_weights)
        sd: dict[str, torch.Tensor] = {}
        copy_fn(sd, lit_weights, saver=None)
        return sd

    # -------------------------------------------------------------------------------- forward
    def forward(self, foreign: LitConfig, state: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        from litgpt import GPT

        model = GPT(foreign.config).to(dtype)  # as LitGPT's scripts do: build, cast, load strictly
        model.load_state_dict({k: v.to(dtype) for k, v in dict(state).items()}, strict=True)
        model.eval()
        with torch.no_grad():
            return model(input_ids)
