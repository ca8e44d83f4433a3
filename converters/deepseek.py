"""Pieces shared by the DeepSeek converters (``deepseek_v2``, ``deepseek_v3``): the multi-head
latent attention section, the dense/DeepSeekMoE layer interleave, and the weight rules, MTP layers
included.

Config (transformers 5, ``DeepseekV2Config``/``DeepseekV3Config``):

- MLA keys map one to one onto ``MLAConfig``; ``num_key_value_heads`` must equal the head count
  (MLA expands its latent into every head; transformers' ``repeat_kv`` breaks otherwise), and the
  derived ``head_dim``/``qk_head_dim`` that the classes compute are accepted when they agree. The
  q/kv LoRA norms of transformers always use eps 1e-6.
- Layer ``i`` is MoE iff ``i >= first_k_dense_replace`` (what transformers builds). ``moe_layer_freq``
  (DeepSeek's remote code) is never read by transformers: only 1 is accepted, and carried.
- ``rope_interleave`` (V3): whether HF's rope rows are interleaved pairs (the native order) or
  half-split. It changes the weight layout, not the model: carried in metadata, read by the rules.

Weights: rope rows are the *last* ``qk_rope_head_dim`` rows of each query head and of
``kv_a_proj_with_mqa``; :class:`TailRotaryPermute` reorders only those (and only for half-split
HF layouts). Routed experts are per expert on disk; shared experts are ``mlp.shared_experts.*``.
MTP layers (``model.layers.{L + j}.*`` beyond the ``L`` decoder layers) map onto ``mtp.{j}.*``
through the same layer rules; :meth:`DeepSeekConverter.fit_checkpoint` counts the ones a checkpoint
carries.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable

import torch

import native
from native.layout import MTP_KEY, mtp_layers

from .activations import activation_to_native
from .config_primitives import ConstantImport, Custom, Dispatch, HFView, Optional, Rename, Variant
from .config_values import read_int
from .errors import ConversionError
from .llama import CARRIED, LlamaConverter, rms_norm
from .llama_weights import gated_mlp_rules
from .moe import DenseAndSparseLayers
from .rope import buildable_rotary, rotary_dispatch
from .weights.rules import WeightRule, embedding_and_head, experts, norm, rename, walk_layers
from .weights.transforms import RotaryPermute, Transform, _count, _rows

DEEPSEEK_CARRIED = CARRIED + ("output_router_logits", "ep_size", "aux_loss_alpha", "seq_aux")


# ------------------------------------------------------------------------------------ attention
def mla_section(defaults: dict[str, Any], rope_kinds) -> dict:
    """Block-level primitives of multi-head latent attention; ``defaults`` are the HF class's."""

    def kv_heads_export(get):
        return {"num_key_value_heads": get("attention.heads")}

    def kv_heads_import(hf: HFView):
        heads = hf.get("num_attention_heads")
        kv = hf.get("num_key_value_heads", defaults["num_key_value_heads"])
        if kv is not None and kv != heads:
            raise ConversionError(f"config.json: num_key_value_heads={kv} must equal num_attention_heads={heads} "
                                  "(multi-head latent attention expands its latent into every head)")
        return {}

    def derived_export(get):
        return {}

    def derived_import(hf: HFView):
        rope, nope = hf.get("qk_rope_head_dim", defaults["qk_rope_head_dim"]), hf.get("qk_nope_head_dim", defaults["qk_nope_head_dim"])
        for key, value in (("head_dim", rope), ("qk_head_dim", nope + rope)):
            if hf.get(key, None) not in (None, value):
                raise ConversionError(f"config.json: {key}={hf.get(key)!r} contradicts the MLA sizes (transformers "
                                      f"sets it to {value})")
        return {}

    return {
        "attention_kind": ConstantImport("attention.kind", "mla", "this format has multi-head latent attention only"),
        "heads": Rename("attention.heads", "num_attention_heads", default=defaults["num_attention_heads"]),
        "kv_heads": Custom((), ("num_key_value_heads",), kv_heads_export, kv_heads_import),
        "derived": Custom((), ("head_dim", "qk_head_dim"), derived_export, derived_import),
        "q_lora_rank": Rename("attention.q_lora_rank", "q_lora_rank", default=defaults["q_lora_rank"]),
        "kv_lora_rank": Rename("attention.kv_lora_rank", "kv_lora_rank", default=defaults["kv_lora_rank"]),
        "qk_nope_head_dim": Rename("attention.qk_nope_head_dim", "qk_nope_head_dim", default=defaults["qk_nope_head_dim"]),
        "qk_rope_head_dim": Rename("attention.qk_rope_head_dim", "qk_rope_head_dim", default=defaults["qk_rope_head_dim"]),
        "v_head_dim": Rename("attention.v_head_dim", "v_head_dim", default=defaults["v_head_dim"]),
        "lora_norm_eps": ConstantImport("attention.lora_norm_eps", 1e-6,
                                        "transformers' q_a/kv_a layernorms always use eps 1e-6"),
        "bias": Rename("attention.bias", "attention_bias", default=False),
        "rotary": deepseek_rotary(rope_kinds),
        "buildable_rotary": buildable_rotary(),
    }


def deepseek_rotary(kinds) -> Dispatch:
    """The rotary kinds against ``rope_parameters``, with YaRN's ``truncate`` written only when
    false: DeepSeek configs never spell it, and transformers reads its absence as true."""
    dispatch = rotary_dispatch(kinds)
    truncate = Optional("truncate", "rope_parameters.truncate", sentinel=True)
    variants = tuple(Variant(v.native_kind, v.hf_value, {**v.section, "truncate": truncate}) if v.native_kind == "yarn"
                     else v for v in dispatch.variants)
    return dataclasses.replace(dispatch, variants=variants)


# ------------------------------------------------------------------------------ layer interleave
class DeepSeekLayers(DenseAndSparseLayers):
    """Dense layers first, then DeepSeekMoE layers (``first_k_dense_replace``), with the MoE and
    dense sizes, ``hidden_act`` and the routing keys of the version. Subclasses give the routing:
    :meth:`routing_export` (native routing fields → HF keys, refusing what the version cannot
    express) and :meth:`routing_import`.

    A key that is inert in a config (the MoE keys when no layer is MoE, ``intermediate_size``
    when none is dense, a ``first_k_dense_replace`` past the last layer) is kept in metadata when
    config.json has it, and written back."""

    native_paths = ("mlp", "mlp.kind", "mlp.intermediate", "mlp.gated", "mlp.activation", "mlp.bias",
                    "mlp.experts", "mlp.top_k", "mlp.shared_experts", "mlp.scoring", "mlp.score_bias", "mlp.groups",
                    "mlp.top_groups", "mlp.group_score", "mlp.normalize_top_k", "mlp.scaling_factor")
    routing_keys: tuple[str, ...] = ()

    def __init__(self, defaults: dict[str, Any]):
        self.defaults = defaults
        self.moe_keys = ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
                         *self.routing_keys)
        self.hf_keys = (*self.moe_keys, "first_k_dense_replace", "moe_layer_freq", "intermediate_size", "hidden_act")

    # -- routing, per version ----------------------------------------------------------------
    def routing_export(self, moe: native.DeepSeekMoEConfig, metadata: dict) -> dict[str, Any]:
        raise NotImplementedError

    def routing_import(self, hf: HFView) -> tuple[dict[str, Any], dict[str, Any]]:
        """→ (native routing fields, metadata items)."""
        raise NotImplementedError

    # -- export --------------------------------------------------------------------------------
    def export(self, layers, get_model):
        metadata = get_model("metadata")
        mlps = [block.mlp for block in layers]
        for m in mlps:
            if not isinstance(m, (native.MLPConfig, native.DeepSeekMoEConfig)):
                raise ConversionError(f"mlp.kind={m.kind!r} cannot be expressed (supported: 'mlp', 'deepseek_moe')")
        sparse = [isinstance(m, native.DeepSeekMoEConfig) for m in mlps]
        k = sparse.index(True) if any(sparse) else len(layers)
        if any(not s for s in sparse[k:]):
            raise ConversionError(f"mlp: the dense/MoE layer pattern {['moe' if s else 'dense' for s in sparse]} "
                                  "cannot be expressed: dense layers must come first (first_k_dense_replace)")
        moe = self.one_section([m for m in mlps if isinstance(m, native.DeepSeekMoEConfig)], "MoE")
        dense = self.one_section([m for m in mlps if isinstance(m, native.MLPConfig)], "dense")
        if k == len(layers) and metadata.get("first_k_dense_replace", -1) > k:
            k = metadata["first_k_dense_replace"]  # all dense: any k past the last layer says so
        out: dict[str, Any] = {"hidden_act": self.hidden_act(mlps), "first_k_dense_replace": k,
                               "moe_layer_freq": metadata.get("moe_layer_freq")}
        if out["moe_layer_freq"] is None:
            del out["moe_layer_freq"]
        if moe is not None:
            if moe.shared_experts < 1:
                raise ConversionError("mlp.shared_experts=0 cannot be expressed: every DeepSeek MoE layer has "
                                      "shared experts (n_shared_experts >= 1)")
            out.update(n_routed_experts=moe.experts, num_experts_per_tok=moe.top_k,
                       moe_intermediate_size=moe.intermediate, n_shared_experts=moe.shared_experts)
            out.update(self.routing_export(moe, metadata))
        else:
            out.update(self.inert_moe_keys(metadata))
        out.update(self.dense_export(dense, metadata))
        return out

    # -- import --------------------------------------------------------------------------------
    def import_(self, hf, num_layers):
        d = self.defaults
        freq = hf.get("moe_layer_freq", None)
        metadata: dict[str, Any] = {}
        if hf.has("moe_layer_freq"):
            if freq != 1:
                raise ConversionError(f"config.json: moe_layer_freq={freq!r} is not supported: transformers never "
                                      "reads it and makes every layer from first_k_dense_replace on MoE (only 1 agrees)")
            metadata["metadata.moe_layer_freq"] = freq
        k = read_int(hf, "first_k_dense_replace", d["first_k_dense_replace"], 0)
        if k > num_layers:
            metadata["metadata.first_k_dense_replace"] = k
        activation = activation_to_native(hf.get("hidden_act", d["hidden_act"]))
        pattern = [i >= k for i in range(num_layers)]
        if any(pattern):
            routing, routing_metadata = self.routing_import(hf)
            moe = {"kind": "deepseek_moe",
                   "experts": read_int(hf, "n_routed_experts", d["n_routed_experts"], 1),
                   "top_k": read_int(hf, "num_experts_per_tok", d["num_experts_per_tok"], 1),
                   "intermediate": read_int(hf, "moe_intermediate_size", d["moe_intermediate_size"], 1),
                   "activation": activation,
                   "shared_experts": read_int(hf, "n_shared_experts", d["n_shared_experts"], 1),
                   **routing}
            metadata.update(routing_metadata)
        else:
            moe = None
            metadata.update(self.inert_moe_import(hf))
        dense = self.dense_import(hf, d["intermediate_size"], activation, pattern, metadata)
        return [{"mlp": dict(moe if s else dense)} for s in pattern], metadata


# ------------------------------------------------------------------------------------ converter
class DeepSeekConverter(LlamaConverter):
    """The parts both versions share; subclasses set the class defaults and the routing."""

    carried = DEEPSEEK_CARRIED
    norm_eps_default = 1e-6
    hf_defaults: dict[str, Any] = {}

    def layers_primitive(self) -> DeepSeekLayers:
        raise NotImplementedError

    def model_section(self):
        return {**super().model_section(), "mlp_bias": Custom((), ("mlp_bias",), lambda get: {}, _no_mlp_bias)}

    def layer_section(self):
        return {
            "placement": ConstantImport("placement", "pre", "pre-norm only"),
            "norm": rms_norm("norm", "rms_norm_eps", self.norm_eps_default),
            **mla_section(self.hf_defaults, self.rope_kinds),
            "mlp": self.layers_primitive(),
        }

    def rope_interleaved(self, cfg: native.ModelConfig) -> bool:
        """Whether HF's rope rows are interleaved pairs (the native order)."""
        return True

    def weight_rules(self, cfg):
        interleaved = self.rope_interleaved(cfg)

        def layer(i, block):
            return deepseek_layer_rules(block, interleaved)

        L = cfg.num_layers
        rules = [*embedding_and_head(cfg.head.tied),
                 *walk_layers(cfg.decoder.layers(), layer),
                 norm("final_norm.weight", "model.norm.weight")]
        for j in range(mtp_layers(cfg)):
            rules += [rule.prefixed(f"mtp.{j}.", f"model.layers.{L + j}.")
                      for rule in mtp_rules(cfg.decoder.layer(L - 1), interleaved)]
        return rules

    def fit_checkpoint(self, cfg: native.ModelConfig, hf_names: Iterable[str]) -> native.ModelConfig:
        """Record how many MTP layers (``model.layers.{L + j}``, ``j = 0, 1, …``) the checkpoint
        carries, so that they are converted rather than refused as unclaimed. Never more than
        ``num_nextn_predict_layers`` says; a checkpoint saved by transformers carries none."""
        declared = cfg.metadata.get("num_nextn_predict_layers", 0) or 0
        layers = {int(m.group(1)) for n in hf_names if (m := re.match(r"model\.layers\.(\d+)\.", n))}
        count = 0
        while cfg.num_layers + count in layers:
            count += 1
        if count > declared:
            raise ConversionError(f"model.layers.{cfg.num_layers + declared}: the checkpoint has {count} layers beyond "
                                  f"num_hidden_layers={cfg.num_layers} but num_nextn_predict_layers={declared}")
        if not count:
            return cfg
        return dataclasses.replace(cfg, metadata={**cfg.metadata, MTP_KEY: count})


def _no_mlp_bias(hf: HFView) -> dict:
    if hf.get("mlp_bias", False) is not False:
        raise ConversionError(f"config.json: mlp_bias={hf.get('mlp_bias')!r} is not supported (no MLP biases)")
    return {}


# -------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class TailRotaryPermute(Transform):
    """Per head of ``head_dim`` rows, the *last* ``rotary_dim`` rows go from the native interleaved
    pair order to HF's half-split order (and back); the rows before them are untouched. MLA keeps
    its rope part after the nope part, in each query head and in ``kv_a_proj_with_mqa``."""

    heads: int
    head_dim: int
    rotary_dim: int

    def _apply(self, x, to_hf: bool):
        h, d, r = self.heads, self.head_dim, self.rotary_dim
        _rows(x, h * d, "rotary tail")
        rest = x.shape[1:]
        y = x.reshape(h, d, *rest)
        rope = y[:, d - r:].reshape(h * r, *rest)
        permute = RotaryPermute(h, r, r)
        rope = permute.export([rope])[0] if to_hf else permute.import_([rope])[0]
        out = y.clone(memory_format=torch.contiguous_format)
        out[:, d - r:] = rope.reshape(h, r, *rest)
        return out.reshape(h * d, *rest)

    def export(self, xs):
        _count(xs, 1, "rotary tail")
        return [self._apply(xs[0], True)]

    def import_(self, xs):
        _count(xs, 1, "rotary tail")
        return [self._apply(xs[0], False)]


def _rope_rule(native_name: str, hf_name: str, heads: int, head_dim: int, rope: int, interleaved: bool) -> WeightRule:
    if interleaved:
        return rename(native_name, hf_name)
    return WeightRule((native_name,), (hf_name,), TailRotaryPermute(heads, head_dim, rope))


def mla_rules(a: native.MLAConfig, interleaved: bool, hf: str = "self_attn.") -> list[WeightRule]:
    rope = a.qk_rope_head_dim
    rules = []
    if a.q_lora_rank is None:
        rules.append(_rope_rule("attn.q.weight", f"{hf}q_proj.weight", a.heads, a.qk_head_dim, rope, interleaved))
    else:
        rules.append(rename("attn.q_down.weight", f"{hf}q_a_proj.weight"))
        if a.bias:
            rules.append(rename("attn.q_down.bias", f"{hf}q_a_proj.bias"))
        rules.append(norm("attn.q_norm.weight", f"{hf}q_a_layernorm.weight"))
        rules.append(_rope_rule("attn.q_up.weight", f"{hf}q_b_proj.weight", a.heads, a.qk_head_dim, rope, interleaved))
    kv_rows = a.kv_lora_rank + rope
    rules.append(_rope_rule("attn.kv_down.weight", f"{hf}kv_a_proj_with_mqa.weight", 1, kv_rows, rope, interleaved))
    if a.bias:
        rules.append(_rope_rule("attn.kv_down.bias", f"{hf}kv_a_proj_with_mqa.bias", 1, kv_rows, rope, interleaved))
    rules.append(norm("attn.kv_norm.weight", f"{hf}kv_a_layernorm.weight"))
    rules.append(rename("attn.kv_up.weight", f"{hf}kv_b_proj.weight"))
    rules.append(rename("attn.o.weight", f"{hf}o_proj.weight"))
    if a.bias:
        rules.append(rename("attn.o.bias", f"{hf}o_proj.bias"))
    return rules


def deepseek_moe_rules(moe: native.DeepSeekMoEConfig) -> list[WeightRule]:
    rules = [rename("mlp.router.weight", "mlp.gate.weight")]
    if moe.score_bias:
        rules.append(rename("mlp.router.score_bias", "mlp.gate.e_score_correction_bias"))
    rules += experts("mlp.experts.fc1", "mlp.experts.fc2", experts=moe.experts,
                     fc1=("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"),
                     fc2="mlp.experts.{e}.down_proj.weight")
    if moe.shared_experts:
        rules += gated_mlp_rules(False, "mlp.shared.", "mlp.shared_experts.")
    return rules


def deepseek_layer_rules(block: native.BlockConfig, interleaved: bool) -> list[WeightRule]:
    ffn = deepseek_moe_rules(block.mlp) if isinstance(block.mlp, native.DeepSeekMoEConfig) else gated_mlp_rules(False)
    return [
        norm("attn_norm.weight", "input_layernorm.weight"),
        *mla_rules(block.attention, interleaved),
        norm("mlp_norm.weight", "post_attention_layernorm.weight"),
        *ffn,
    ]


def mtp_rules(block: native.BlockConfig, interleaved: bool) -> list[WeightRule]:
    """One MTP module, names relative to ``mtp.{j}.`` / ``model.layers.{L + j}.``."""
    return [
        rename("embedding.weight", "embed_tokens.weight"),
        norm("enorm.weight", "enorm.weight"),
        norm("hnorm.weight", "hnorm.weight"),
        rename("eh_proj.weight", "eh_proj.weight"),
        *[rule.prefixed("layer.", "") for rule in deepseek_layer_rules(block, interleaved)],
        norm("head_norm.weight", "shared_head.norm.weight"),
        rename("output.weight", "shared_head.head.weight"),
    ]
