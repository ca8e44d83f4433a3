"""Phi-3: Llama with fused ``qkv_proj`` (``[q; k; v]``) and ``gate_up_proj`` (``[gate; up]``), partial
rotary, LongRoPE, one optional sliding window, and no biases.

Checked against transformers 5 ``Phi3Config``/``modeling_phi3``/``modeling_rope_utils``:

- rope types: ``default`` and ``longrope`` only (``Phi3Config.validate_rope``); the legacy ``su`` and
  ``yarn`` names mean ``longrope``;
- ``partial_rotary_factor`` lives in ``rope_parameters`` (``Phi3Config`` fills it, default 1.0, from a
  top-level ``partial_rotary_factor`` when given, and keeps that top-level key as well);
- LongRoPE's ``original_max_position_embeddings`` is the **top-level** key (a ``Phi3Config`` field,
  default 4096): ``standardize_rope_params`` overwrites ``rope_parameters.original_max_position_embeddings``
  with it. With the default rope type the top-level key is inert and carried;
- ``Phi3Config`` sizes ``short_factor``/``long_factor`` by ``hidden_size // num_attention_heads``
  while the model rotates ``head_dim`` dims: LongRoPE with another ``head_dim`` is refused;
- ``head_dim`` is read with ``getattr`` (default ``hidden_size // num_attention_heads``);
- ``attention_bias`` is read by nothing (real configs carry ``false``): carried, like the dropouts
  ``resid_pdrop``/``embd_pdrop``/``attention_dropout`` and the token ids.
"""
from __future__ import annotations

from .attention import HeadDim, fixed_biases

import copy

from native import LongRopeRotary

from .config_primitives import ConstantImport, Optional, Rename
from .declaration import LayerwisePrimitive
from .errors import ConversionError
from .llama import CARRIED, LlamaConverter
from .rope import canonical_rope, rotary_dispatch
from .weights.rules import embedding_and_head, fused_qkv, norm, rename, walk_layers

ORIGINAL_MAX_DEFAULT = 4096
ROPE_ALIASES = {"su": "longrope", "yarn": "longrope"}  # Phi3Config.convert_rope_params_to_dict


class Phi3TopLevelRope(LayerwisePrimitive):
    """The two top-level rope keys of ``Phi3Config``:

    - ``original_max_position_embeddings``: LongRoPE's original context (already moved into
      ``rope_parameters`` by :meth:`Phi3Converter.canonical_hf`); inert and carried otherwise;
    - ``partial_rotary_factor``: the legacy spelling of ``rope_parameters.partial_rotary_factor``,
      which ``Phi3Config`` keeps beside it; its presence is carried, its value is the rotary fraction.
    """

    native_paths = ()  # the values themselves are claimed by the rotary dispatch
    hf_keys = ("original_max_position_embeddings", "partial_rotary_factor")

    def export(self, layers, get_model):
        metadata = get_model("metadata")
        rotary = layers[0].attention.rotary
        out = {}
        if isinstance(rotary, LongRopeRotary):
            out["original_max_position_embeddings"] = rotary.original_max_position_embeddings
        elif "original_max_position_embeddings" in metadata:
            out["original_max_position_embeddings"] = metadata["original_max_position_embeddings"]
        if "partial_rotary_factor" in metadata:
            out["partial_rotary_factor"] = rotary.fraction
        return out

    def import_(self, hf, num_layers):
        metadata = {}
        if hf.get("rope_parameters.rope_type") != "longrope" and hf.has("original_max_position_embeddings"):
            metadata["metadata.original_max_position_embeddings"] = hf.get("original_max_position_embeddings")
        if hf.has("partial_rotary_factor"):
            metadata["metadata.partial_rotary_factor"] = hf.get("partial_rotary_factor")
        return [{}] * num_layers, metadata


class Phi3Converter(LlamaConverter):
    model_type = "phi3"
    architecture = "Phi3ForCausalLM"
    rope_kinds = ("default", "longrope")
    carried = tuple(k for k in CARRIED if k != "pretraining_tp") + ("resid_pdrop", "embd_pdrop", "attention_bias")
    norm_eps_default = 1e-5
    max_position_default = 4096

    def layer_section(self):
        return {
            **super().layer_section(),
            "bias": fixed_biases(False, False, False, False, "Phi-3's qkv_proj and o_proj have no bias"),
            "window": Optional("attention.window", "sliding_window", write_sentinel=True),
            # Phi3Config has no head_dim field (read with getattr, default hidden // heads): written
            # where it differs, where the heads do not divide hidden_size, or where config.json had it.
            "head_dim": HeadDim(),
            "rotary": rotary_dispatch(self.rope_kinds, fraction=Rename(
                "fraction", "rope_parameters.partial_rotary_factor", default=1.0, to_native=float)),
            "top_level_rope": Phi3TopLevelRope(),
        }

    def mlp_section(self):
        return {**super().mlp_section(), "bias": ConstantImport("bias", False, "Phi-3's MLP has no bias")}

    def canonical_hf(self, hf):
        out = copy.deepcopy(dict(hf))
        for key in ("rope_scaling", "rope_parameters"):
            params = out.get(key)
            if isinstance(params, dict):
                for name in ("type", "rope_type"):
                    if params.get(name) in ROPE_ALIASES:
                        params[name] = ROPE_ALIASES[params[name]]
        out = canonical_rope(out, self.default_theta)
        params = out["rope_parameters"]
        if "partial_rotary_factor" in out:
            top = out["partial_rotary_factor"]
            if params.setdefault("partial_rotary_factor", top) != top:
                raise ConversionError(f"config.json: partial_rotary_factor={top!r} contradicts "
                                      f"rope_parameters.partial_rotary_factor={params['partial_rotary_factor']!r}")
        params.setdefault("partial_rotary_factor", 1.0)
        if params["rope_type"] == "longrope":
            # Phi3Config's top-level field (default 4096) overrides rope_parameters' value
            params["original_max_position_embeddings"] = out.get("original_max_position_embeddings", ORIGINAL_MAX_DEFAULT)
        return out

    def import_config(self, hf):
        cfg = super().import_config(hf)
        self._check_longrope_head_dim(cfg)
        return cfg

    def export_config(self, cfg):
        self._check_longrope_head_dim(cfg)
        return super().export_config(cfg)

    @staticmethod
    def _check_longrope_head_dim(cfg):
        for i, block in enumerate(cfg.decoder.layers()):
            a = block.attention
            if isinstance(a.rotary, LongRopeRotary) and a.head_dim * a.heads != cfg.hidden_size:
                raise ConversionError(
                    f"layer {i}: attention.head_dim={a.head_dim} with longrope cannot be expressed: Phi3Config sizes "
                    f"rope_parameters.short_factor/long_factor by hidden_size // num_attention_heads "
                    f"= {cfg.hidden_size // a.heads}")

    def weight_rules(self, cfg):
        def layer(i, block):
            a = block.attention
            return [norm("attn_norm.weight", "input_layernorm.weight"),
                    fused_qkv("attn.qkv.weight", "self_attn.qkv_proj.weight", heads=a.heads, kv_heads=a.kv_heads,
                              head_dim=a.head_dim, rotary_dim=a.rotary.rotary_dim(a.head_dim)),
                    rename("attn.o.weight", "self_attn.o_proj.weight"),
                    norm("mlp_norm.weight", "post_attention_layernorm.weight"),
                    rename("mlp.fc1.weight", "mlp.gate_up_proj.weight"),  # [gate; up]: the native layout
                    rename("mlp.fc2.weight", "mlp.down_proj.weight")]

        return [*embedding_and_head(cfg.head.tied),
                *walk_layers(cfg.decoder.layers(), layer),
                norm("final_norm.weight", "model.norm.weight")]
