"""Pieces shared by the MoE converters (Mixtral, Qwen2-MoE, Qwen3-MoE).

- :class:`DenseAndSparseLayers`: what every dense-or-MoE-per-layer format shares (DeepSeek's too).
- :class:`QwenMoeLayers`: the per-layer choice dense MLP vs sparse MoE as Qwen2-MoE/Qwen3-MoE
  express it (``num_experts``, ``decoder_sparse_step``, ``mlp_only_layers``) together with the
  MoE and dense sizes and ``hidden_act``, all of which live in one native ``mlp`` section per layer.
- :func:`moe_rules`: stacked native experts ↔ per-expert tensors as ``save_pretrained`` writes them.

(``HeadDim`` and ``kv_heads`` are in :mod:`converters.attention`, ``merge_alias`` in
:mod:`converters.config_primitives`, ``buildable_rotary`` in :mod:`converters.rope`.)

Metadata convention (as :class:`~converters.config_primitives.Carried`): a metadata key is the HF
key it stands for. A key that is *inert* in a given config (it cannot change the forward pass, e.g.
``moe_intermediate_size`` when no layer is sparse), or an *encoding choice* (``decoder_sparse_step``
when explicit ``mlp_only_layers`` would say the same), is recorded on import only when export would
not reproduce it by itself, and export writes it back. A native config without metadata therefore
exports to the canonical form and imports back to itself.
"""
from __future__ import annotations

from typing import Any, Sequence

import native
from native.schema import to_plain

from .activations import activation_to_hf, activation_to_native
from .config_primitives import HFView
from .declaration import LayerwisePrimitive
from .config_values import read_bool, read_int
from .errors import ConversionError
from .llama_weights import attention_rules, gated_mlp_rules
from .weights.rules import WeightRule, experts, norm, rename


class DenseAndSparseLayers(LayerwisePrimitive):
    """What every dense-or-MoE-per-layer format shares: one set of keys for all sparse layers, one
    ``intermediate_size`` for all dense ones (a gated, bias-free MLP), one ``hidden_act`` for both,
    and the inert keys (the MoE keys when no layer is sparse, ``intermediate_size`` when none is
    dense) carried in metadata. Subclasses decide which layer is which and write the MoE keys."""

    moe_keys: tuple[str, ...] = ()

    @staticmethod
    def one_section(sections: list, what: str):
        """The one section all layers of a kind share (None without such a layer)."""
        distinct = []
        for section in sections:
            if section not in distinct:
                distinct.append(section)
        if len(distinct) > 1:
            a, b = (to_plain(s) for s in distinct[:2])
            raise ConversionError(f"mlp: the {what} layers differ ({a} vs {b}); this format has one set of {what} keys")
        return distinct[0] if distinct else None

    @staticmethod
    def hidden_act(mlps: list) -> str:
        activations = sorted({m.activation for m in mlps})
        if len(activations) > 1:
            raise ConversionError(f"mlp.activation differs between layers ({activations}); "
                                  "this format has one hidden_act for dense and expert MLPs")
        return activation_to_hf(activations[0])

    def inert_moe_keys(self, metadata: dict) -> dict[str, Any]:
        """Export without a sparse layer: the MoE keys config.json had."""
        return {key: metadata[key] for key in self.moe_keys if key in metadata}

    @staticmethod
    def dense_export(dense: native.MLPConfig | None, metadata: dict) -> dict[str, Any]:
        if dense is None:
            return {"intermediate_size": metadata["intermediate_size"]} if "intermediate_size" in metadata else {}
        if not dense.gated:
            raise ConversionError("mlp.gated=False cannot be expressed (this format requires True): gated MLP only")
        if dense.bias:
            raise ConversionError("mlp.bias=True cannot be expressed (this format requires False): no MLP biases")
        return {"intermediate_size": dense.intermediate}

    def inert_moe_import(self, hf: HFView) -> dict[str, Any]:
        """Import without a sparse layer: the MoE keys, kept in metadata."""
        return {f"metadata.{key}": hf.get(key) for key in self.moe_keys if hf.has(key)}

    @staticmethod
    def dense_import(hf: HFView, default: int, activation: str, pattern: list[bool],
                     metadata: dict[str, Any]) -> dict[str, Any] | None:
        """The dense MLP of the layers that are not sparse (None when every layer is; an
        ``intermediate_size`` is then kept in metadata)."""
        if all(pattern):
            if hf.has("intermediate_size"):
                metadata["metadata.intermediate_size"] = hf.get("intermediate_size")
            return None
        return {"kind": "mlp", "intermediate": read_int(hf, "intermediate_size", default, 1),
                "gated": True, "activation": activation, "bias": False}


class QwenMoeLayers(DenseAndSparseLayers):
    """Dense vs sparse per layer, as Qwen2-MoE/Qwen3-MoE decide it:
    layer ``i`` is sparse iff ``i not in mlp_only_layers and num_experts > 0 and
    (i + 1) % decoder_sparse_step == 0``.

    Every sparse layer shares one set of MoE keys and every dense layer ``intermediate_size``;
    ``hidden_act`` is shared by both. ``shared``: Qwen2-MoE's always-present shared expert with its
    sigmoid gate (``shared_expert_intermediate_size``); without it (Qwen3-MoE) a native shared
    expert is refused.

    Canonical export: ``decoder_sparse_step=1`` and ``mlp_only_layers`` = the dense layers, which
    can express every pattern. An imported encoding that differs from that (say
    ``decoder_sparse_step=2``) is kept in metadata and written back when it still describes the
    native pattern."""

    def __init__(self, *, experts_key: str, defaults: dict[str, Any], shared: bool):
        self.experts_key = experts_key
        self.defaults = defaults  # HF class defaults of every key below
        self.shared = shared
        moe = [experts_key, "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob"]
        if shared:
            moe.append("shared_expert_intermediate_size")
        self.moe_keys = tuple(moe)
        self.hf_keys = (*self.moe_keys, "intermediate_size", "hidden_act", "decoder_sparse_step", "mlp_only_layers")

    native_paths = ("mlp", "mlp.kind", "mlp.intermediate", "mlp.gated", "mlp.activation", "mlp.bias",
                    "mlp.experts", "mlp.top_k", "mlp.normalize_top_k", "mlp.shared_intermediate", "mlp.shared_gate")

    # -- the rule --------------------------------------------------------------------------------
    @staticmethod
    def sparse_pattern(num_layers: int, num_experts: int, step: int, mlp_only: Sequence[int]) -> list[bool]:
        return [i not in mlp_only and num_experts > 0 and (i + 1) % step == 0 for i in range(num_layers)]

    @staticmethod
    def canonical_encoding(pattern: Sequence[bool], num_experts: int) -> tuple[int, list[int]]:
        return 1, ([i for i, sparse in enumerate(pattern) if not sparse] if num_experts > 0 else [])

    # -- export ----------------------------------------------------------------------------------
    def _check_moe(self, moe: native.MoEConfig) -> None:
        if self.shared:
            if moe.shared_intermediate is None or not moe.shared_gate:
                raise ConversionError(
                    f"mlp.shared_intermediate={moe.shared_intermediate!r}, mlp.shared_gate={moe.shared_gate!r} "
                    "cannot be expressed: every Qwen2-MoE sparse layer has a shared expert with a sigmoid gate")
        elif moe.shared_intermediate is not None or moe.shared_gate:
            raise ConversionError(f"mlp.shared_intermediate={moe.shared_intermediate!r} cannot be expressed: "
                                  "this format has no shared expert")

    def export(self, layers, get_model):
        metadata = get_model("metadata")
        mlps = [block.mlp for block in layers]
        pattern = [isinstance(m, native.MoEConfig) for m in mlps]
        moe = self.one_section([m for m in mlps if isinstance(m, native.MoEConfig)], "sparse")
        dense = self.one_section([m for m in mlps if not isinstance(m, native.MoEConfig)], "dense")
        out: dict[str, Any] = {"hidden_act": self.hidden_act(mlps)}
        if moe is not None:
            self._check_moe(moe)
            out[self.experts_key] = moe.experts
            out["num_experts_per_tok"] = moe.top_k
            out["moe_intermediate_size"] = moe.intermediate
            out["norm_topk_prob"] = moe.normalize_top_k
            if self.shared:
                out["shared_expert_intermediate_size"] = moe.shared_intermediate
        else:
            out.update(self.inert_moe_keys(metadata))
        out.update(self.dense_export(dense, metadata))

        num_experts = out.get(self.experts_key, self.defaults[self.experts_key])
        step, mlp_only = self.canonical_encoding(pattern, num_experts)
        hinted = (metadata.get("decoder_sparse_step", step), metadata.get("mlp_only_layers", mlp_only))
        if _valid_step(hinted[0]) and self.sparse_pattern(len(layers), num_experts, *hinted) == pattern:
            step, mlp_only = hinted
        if self.sparse_pattern(len(layers), num_experts, step, mlp_only) != pattern:
            raise ConversionError(f"mlp: the sparse/dense layer pattern {pattern} cannot be expressed with "
                                  f"{self.experts_key}={num_experts}")
        out["decoder_sparse_step"] = step
        out["mlp_only_layers"] = list(mlp_only)
        return out

    # -- import ----------------------------------------------------------------------------------
    def import_(self, hf, num_layers):
        d = self.defaults
        num_experts = read_int(hf, self.experts_key, d[self.experts_key], 0)
        step = read_int(hf, "decoder_sparse_step", d["decoder_sparse_step"], 1)
        mlp_only = hf.get("mlp_only_layers", None)
        mlp_only = [] if mlp_only is None else mlp_only
        if not isinstance(mlp_only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in mlp_only):
            raise ConversionError(f"config.json: mlp_only_layers={mlp_only!r} must be a list of layer indices")
        activation = activation_to_native(hf.get("hidden_act", d["hidden_act"]))
        pattern = self.sparse_pattern(num_layers, num_experts, step, mlp_only)

        metadata: dict[str, Any] = {}
        if any(pattern):
            moe = {
                "kind": "moe",
                "experts": num_experts,
                "top_k": read_int(hf, "num_experts_per_tok", d["num_experts_per_tok"], 1),
                "intermediate": read_int(hf, "moe_intermediate_size", d["moe_intermediate_size"], 1),
                "activation": activation,
                "normalize_top_k": read_bool(hf, "norm_topk_prob", d["norm_topk_prob"]),
                "shared_intermediate": None,
                "shared_gate": False,
            }
            if self.shared:
                moe["shared_intermediate"] = read_int(hf, "shared_expert_intermediate_size",
                                                  d["shared_expert_intermediate_size"], 1)
                moe["shared_gate"] = True
        else:
            moe = None
            metadata.update(self.inert_moe_import(hf))
        dense = self.dense_import(hf, d["intermediate_size"], activation, pattern, metadata)

        canonical_step, canonical_mlp_only = self.canonical_encoding(pattern, num_experts)
        if step != canonical_step:
            metadata["metadata.decoder_sparse_step"] = step
        if mlp_only != canonical_mlp_only:
            metadata["metadata.mlp_only_layers"] = list(mlp_only)
        per_layer = [{"mlp": dict(moe if sparse else dense)} for sparse in pattern]
        return per_layer, metadata


def _valid_step(step: Any) -> bool:
    return isinstance(step, int) and not isinstance(step, bool) and step >= 1


# ---------------------------------------------------------------------------------------- weights
def moe_rules(moe: native.MoEConfig, *, router: str, fc1: Sequence[str], fc2: str,
              shared: str | None = None, shared_gate: str | None = None) -> list[WeightRule]:
    """One sparse layer (layer-relative names): the router, the stacked experts split per expert
    (``fc1`` = the gate and up templates with ``{e}``, ``fc2`` the down template), and the shared
    expert (``shared`` = the HF prefix of its gate/up/down projections) with its gate."""
    from .llama_weights import gated_mlp_rules

    rules = [rename("mlp.router.weight", router),
             *experts("mlp.experts.fc1", "mlp.experts.fc2", experts=moe.experts, fc1=tuple(fc1), fc2=fc2)]
    if moe.shared_intermediate is not None:
        if shared is None:
            raise ConversionError("mlp.shared_intermediate: this format has no shared expert")
        rules += gated_mlp_rules(False, "mlp.shared.", shared)
    if moe.shared_gate:
        if shared_gate is None:
            raise ConversionError("mlp.shared_gate: this format has no shared expert gate")
        rules.append(rename("mlp.shared_gate.weight", shared_gate))
    return rules


__all__ = ["QwenMoeLayers", "moe_rules"]


def qwen_moe_layer_rules(block, shared_expert: bool) -> list[WeightRule]:
    """A Qwen2-MoE/Qwen3-MoE layer: Llama's attention and norms, and a sparse or dense MLP
    (``shared_expert``: Qwen2-MoE's gated shared expert beside the routed ones)."""
    mlp = block.mlp
    if mlp.kind == "moe":
        shared = dict(shared="mlp.shared_expert.", shared_gate="mlp.shared_expert_gate.weight") if shared_expert else {}
        ffn = moe_rules(mlp, router="mlp.gate.weight",
                        fc1=("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"),
                        fc2="mlp.experts.{e}.down_proj.weight", **shared)
    else:
        ffn = gated_mlp_rules(mlp.bias)
    return [
        norm("attn_norm.weight", "input_layernorm.weight"),
        *attention_rules(block),
        norm("mlp_norm.weight", "post_attention_layernorm.weight"),
        *ffn,
    ]
