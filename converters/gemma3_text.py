"""Gemma3 (text): Gemma2 plus per-head q/k RMSNorm, a 5:1 sliding pattern, and one rotary embedding
per layer type.

- ``rope_parameters`` is nested by layer type, ``{"sliding_attention": {...}, "full_attention":
  {...}}``; sliding layers take the first, full layers the second (local theta 10k, global theta 1M,
  scaling usually on the global one only). The v4 form, ``rope_theta`` (global) +
  ``rope_local_base_freq`` (local) + ``rope_scaling`` (merged into the global one), is read the way
  ``Gemma3TextConfig`` reads it; contradictions between the two forms are refused. A flat (un-nested)
  ``rope_parameters`` is refused: transformers would mix it with the nested defaults.
- The parameters of a layer type no layer uses are inert: carried in ``metadata["rope_parameters"]``
  (unless they are transformers' default for that type, which export writes when none is carried).
- ``layer_types`` default: every ``sliding_window_pattern``-th layer full (default 6).
  ``sliding_window_pattern`` and the private ``_sliding_window_pattern`` that transformers writes are
  inert beside explicit ``layer_types`` (always written) and carried.
- YaRN ``truncate`` inside a nested rope dict is ignored by transformers (it reads the top level of
  ``rope_parameters``), so Gemma3's YaRN always truncates: ``truncate=False`` is refused both ways.
- q/k norms share ``rms_norm_eps`` and, like every Gemma norm, are zero-centred (``1 + w``).
- ``attn_logit_softcapping`` is accepted by ``Gemma3TextConfig`` but not passed to the attention by
  transformers 5 (Gemma3 has no attention softcap): only null is accepted, so a value the HF model
  would silently ignore is refused rather than dropped or applied.
- ``use_bidirectional_attention`` (default false) is refused when true.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from .config_primitives import ConstantExport, ConstantImport, Custom, Dispatch, HFView, Variant
from .errors import ConversionError
from .gemma import bidirectional
from .gemma2 import FULL, LAYER_TYPES, SLIDING, Gemma2Converter, GemmaLayerTypes
from .llama import ALL_ROPE_KINDS, rms_norm
from .rope import _ORIGINAL_DEFAULTS_TO_MAX, rotary_dispatch

#: transformers' defaults for Gemma3 rope thetas (Gemma3TextConfig.default_theta)
DEFAULT_THETAS = {SLIDING: 10_000.0, FULL: 1_000_000.0}
PATTERN_KEYS = ("sliding_window_pattern", "_sliding_window_pattern")


def pattern_layer_types(hf: HFView, num_layers: int) -> list[str]:
    """Gemma3's default: layer ``i`` is full iff ``(i + 1) % sliding_window_pattern == 0``."""
    pattern = hf.get("sliding_window_pattern", 6)
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
        raise ConversionError(f"config.json: sliding_window_pattern={pattern!r} must be a positive integer")
    return [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]


def canonical_gemma3_rope(hf: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``hf`` with nested v5 ``rope_parameters`` (both layer types, ``rope_type`` and
    ``rope_theta`` set) and no v4 rope keys, as ``Gemma3TextConfig.convert_rope_params_to_dict`` reads
    them; refusing where the two forms contradict each other instead of picking a side."""
    out = copy.deepcopy(dict(hf))
    scaling = out.pop("rope_scaling", None)
    v4_theta = {FULL: out.pop("rope_theta", None), SLIDING: out.pop("rope_local_base_freq", None)}
    params = out.get("rope_parameters")
    if params is None:
        params = {SLIDING: {"rope_type": "default"}, FULL: {"rope_type": "default"}}
    if not isinstance(params, Mapping) or set(params) - set(LAYER_TYPES):
        raise ConversionError(f"config.json: rope_parameters={params!r} must be nested by layer type "
                              f"({SLIDING!r}, {FULL!r}); a flat dict is not Gemma3's form")
    params = {t: dict(params.get(t) or {"rope_type": "default"}) for t in LAYER_TYPES}
    if scaling is not None:
        for key, value in dict(scaling).items():
            if key in params[FULL] and params[FULL][key] != value and not (key in ("type", "rope_type")
                                                                          and params[FULL][key] == "default"):
                raise ConversionError(f"config.json: rope_scaling.{key}={value!r} contradicts "
                                      f"rope_parameters.{FULL}.{key}={params[FULL][key]!r}")
            params[FULL][key] = value
    for layer_type, p in params.items():
        if "type" in p:
            kind = p.pop("type")
            if p.setdefault("rope_type", kind) != kind:
                raise ConversionError(f"config.json: rope_parameters.{layer_type}: type={kind!r} contradicts "
                                      f"rope_type={p['rope_type']!r}")
        p.setdefault("rope_type", "default")
        theta = v4_theta[layer_type]
        if theta is not None and p.setdefault("rope_theta", theta) != theta:
            key = "rope_theta" if layer_type == FULL else "rope_local_base_freq"
            raise ConversionError(f"config.json: {key}={theta!r} contradicts "
                                  f"rope_parameters.{layer_type}.rope_theta={p['rope_theta']!r}")
        p.setdefault("rope_theta", DEFAULT_THETAS[layer_type])
        if p["rope_type"] in _ORIGINAL_DEFAULTS_TO_MAX and "original_max_position_embeddings" not in p:
            p["original_max_position_embeddings"] = out.get("max_position_embeddings", 131_072)
    out["rope_parameters"] = params
    return out


def yarn_truncate(prefix: str) -> Custom:
    """YaRN's ``truncate`` inside a nested rope dict is never read: transformers' YaRN takes it from
    the top level of ``rope_parameters`` (``config.rope_parameters.get("truncate", True)``), which for
    Gemma3 holds only the layer types, so Gemma3's YaRN always truncates. Only True is accepted."""
    key = f"{prefix}.truncate"

    def export(get):
        if get("truncate") is not True:
            raise ConversionError(f"attention.rotary.truncate={get('truncate')!r} cannot be expressed: "
                                  "transformers' Gemma3 YaRN always truncates (it ignores a per-layer-type truncate)")
        return {key: True}

    def import_(hf):
        value = hf.get(key, True)
        if value is not True:
            raise ConversionError(f"config.json: {key}={value!r} is ignored by transformers' Gemma3 YaRN, which "
                                  "always truncates; refused rather than silently changed")
        return {"truncate": True}

    return Custom(("truncate",), (key,), export, import_)


def gemma3_rotary_dispatch(kinds: tuple[str, ...], prefix: str) -> Dispatch:
    """``attention.rotary`` from one nested rope dict: full rotation only, YaRN always truncating."""
    base = rotary_dispatch(kinds, prefix=prefix)
    variants = tuple(Variant(v.native_kind, v.hf_value, {**v.section, "truncate": yarn_truncate(prefix)})
                     if v.native_kind == "yarn" else v for v in base.variants)
    return Dispatch(base.native, base.hf_key, variants)


class Gemma3LayerTypes(GemmaLayerTypes):
    """Gemma2's ``layer_types``/``sliding_window``, plus the rotary embedding of each layer type from
    ``rope_parameters.<layer type>``. All layers of one type share one rotary config."""

    native_paths = ("attention.window", "attention.rotary")

    def __init__(self, kinds: tuple[str, ...]):
        super().__init__(pattern_layer_types)
        self.rotary = {t: gemma3_rotary_dispatch(kinds, f"rope_parameters.{t}") for t in LAYER_TYPES}
        self.hf_keys = GemmaLayerTypes.hf_keys + tuple(k for d in self.rotary.values() for k in d.hf_keys)

    def claimed_hf(self, hf):
        return set(GemmaLayerTypes.hf_keys).union(*(d.claimed_hf(hf) for d in self.rotary.values()))

    def import_(self, hf, num_layers):
        per_layer, metadata = super().import_(hf, num_layers)
        layer_types = self.layer_types(hf, num_layers)
        rotary = {t: self.rotary[t].import_(hf) for t in LAYER_TYPES}  # validates both, used or not
        for layer, layer_type in zip(per_layer, layer_types):
            layer.update(rotary[layer_type])
        unused = {t: copy.deepcopy(hf.get(f"rope_parameters.{t}")) for t in LAYER_TYPES
                  if t not in layer_types and hf.get(f"rope_parameters.{t}") != _default_rope(t)}
        if unused:
            metadata["metadata.rope_parameters"] = unused
        return per_layer, metadata

    def export(self, layers, get_model):
        out = super().export(layers, get_model)
        carried = get_model("metadata").get("rope_parameters", {})
        rope: dict[str, Any] = {}
        for layer_type in LAYER_TYPES:
            rotaries = {}
            for i, (block, t) in enumerate(zip(layers, out["layer_types"])):
                if t == layer_type:
                    rotaries.setdefault(block.attention.rotary, i)
            if len(rotaries) > 1:
                (a, i), (b, j) = list(rotaries.items())[:2]
                raise ConversionError(f"attention.rotary differs between {layer_type} layers {i} and {j} "
                                      f"({a} vs {b}); this format has one rotary embedding per layer type")
            if rotaries:
                items = self.rotary[layer_type].export(lambda path, b=layers[next(iter(rotaries.values()))]: _get(b, path))
                prefix = f"rope_parameters.{layer_type}."
                rope[layer_type] = {k.removeprefix(prefix): v for k, v in items.items()}
            else:
                rope[layer_type] = copy.deepcopy(carried.get(layer_type)) or _default_rope(layer_type)
        out["rope_parameters"] = rope
        return out


def _default_rope(layer_type: str) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": DEFAULT_THETAS[layer_type]}


def _get(block, path):
    import native

    return native.get_path(block, path)


class Gemma3TextConverter(Gemma2Converter):
    model_type = "gemma3_text"
    architecture = "Gemma3ForCausalLM"
    carried = Gemma2Converter.carried + PATTERN_KEYS
    max_position_default = 131_072
    final_softcap_default = None
    rope_kinds = ALL_ROPE_KINDS

    def model_section(self):
        return {**super().model_section(), "bidirectional": bidirectional((None, False))}

    def layer_section(self):
        section = {
            **super().layer_section(),
            "qk_norm": rms_norm("attention.qk_norm", "rms_norm_eps", self.norm_eps_default,
                               self.norm_zero_centered),
            "qk_norm_scope": ConstantImport("attention.qk_norm_scope", "head", "Gemma3 normalises q/k per head"),
            "logit_softcap": ConstantImport("attention.logit_softcap", None,
                                            "transformers' Gemma3 attention applies no logit softcap"),
            "attn_softcap_key": ConstantExport("attn_logit_softcapping", None),
        }
        del section["rotary"]  # per layer type, in "window"
        return section

    def layer_types_section(self):
        return Gemma3LayerTypes(self.rope_kinds)

    def canonical_hf(self, hf):
        canonical = canonical_gemma3_rope(hf)
        self._check_heads(canonical, "config.json: ")
        return canonical


__all__ = ["Gemma3TextConverter", "canonical_gemma3_rope", "pattern_layer_types"]
