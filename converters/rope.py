"""Rotary embeddings on the HF side: both config forms on import, the v5 form on export.

transformers 5 writes ``rope_parameters`` (with ``rope_type`` and ``rope_theta`` inside). Older
configs carry ``rope_theta`` at top level and an optional ``rope_scaling`` dict keyed by ``type`` or
``rope_type``. :func:`canonical_rope` rewrites a dict into the v5 form before the declaration sees
it, refusing contradictions instead of picking a side. :func:`rotary_dispatch` declares the
native rotary kinds against ``rope_parameters``.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from .config_primitives import (
    ConfigPrimitive,
    ConstantImport,
    Custom,
    Dispatch,
    Optional,
    Rename,
    Variant,
)
from .errors import ConversionError

DEFAULT_THETA = 10000.0
#: native metadata flag: the source spelled the rope kind as v4 ``type`` beside ``rope_type``, which
#: transformers 5 keeps in ``rope_parameters``; the export writes it back so nothing changes.
TYPE_ALIAS_KEY = "hf_rope_type_alias"
#: rope kinds whose ``original_max_position_embeddings`` defaults to ``max_position_embeddings``
_ORIGINAL_DEFAULTS_TO_MAX = ("llama3", "yarn", "longrope")


def canonical_rope(hf: Mapping[str, Any], default_theta: float = DEFAULT_THETA) -> dict[str, Any]:
    """Return a copy of ``hf`` with a v5 ``rope_parameters`` and no v4 rope keys."""
    out = copy.deepcopy(dict(hf))
    scaling = out.pop("rope_scaling", None)
    top_theta = out.pop("rope_theta", None)
    params = out.get("rope_parameters")
    if scaling is not None and params is not None and dict(scaling) != dict(params):
        raise ConversionError("config.json: both 'rope_scaling' and 'rope_parameters' are set and disagree")
    params = dict(scaling if scaling is not None else (params or {}))
    if "type" in params:
        kind = params.pop("type")
        if params.setdefault("rope_type", kind) != kind:
            raise ConversionError(f"config.json: rope 'type'={kind!r} contradicts rope_type={params['rope_type']!r}")
    params.setdefault("rope_type", "default")
    if top_theta is not None:
        if params.setdefault("rope_theta", top_theta) != top_theta:
            raise ConversionError(f"config.json: rope_theta={top_theta!r} contradicts "
                                  f"rope_parameters.rope_theta={params['rope_theta']!r}")
    params.setdefault("rope_theta", default_theta)
    if params["rope_type"] in _ORIGINAL_DEFAULTS_TO_MAX and "original_max_position_embeddings" not in params:
        if "max_position_embeddings" not in out:
            raise ConversionError(f"config.json: rope_type={params['rope_type']!r} needs "
                                  "original_max_position_embeddings or max_position_embeddings")
        params["original_max_position_embeddings"] = out["max_position_embeddings"]
    out["rope_parameters"] = params
    return out


def _as_list(values):
    return [float(v) for v in values]


def _float(value):
    return float(value)


def rotary_variants(fraction: ConfigPrimitive, prefix: str = "rope_parameters") -> tuple[Variant, ...]:
    """The rotary kinds, each mapping native fields to ``{prefix}.*`` keys. ``fraction`` is the
    primitive for partial rotary (a constant 1.0 where the architecture cannot express it)."""
    p = prefix

    def section(**extra: ConfigPrimitive) -> dict[str, ConfigPrimitive]:
        return {"theta": Rename("theta", f"{p}.rope_theta", to_native=_float), "fraction": fraction, **extra}

    factor = Rename("factor", f"{p}.factor", to_native=_float)
    original = Rename("original_max_position_embeddings", f"{p}.original_max_position_embeddings")
    return (
        Variant("default", "default", section()),
        Variant("linear", "linear", section(factor=factor)),
        Variant("dynamic", "dynamic", section(factor=factor)),
        Variant("llama3", "llama3", section(
            factor=factor,
            low_freq_factor=Rename("low_freq_factor", f"{p}.low_freq_factor", to_native=_float),
            high_freq_factor=Rename("high_freq_factor", f"{p}.high_freq_factor", to_native=_float),
            original=original)),
        Variant("yarn", "yarn", section(
            factor=Optional("factor", f"{p}.factor"),
            original=original,
            beta_fast=Rename("beta_fast", f"{p}.beta_fast", default=32.0, to_native=_float),
            beta_slow=Rename("beta_slow", f"{p}.beta_slow", default=1.0, to_native=_float),
            mscale=Optional("mscale", f"{p}.mscale"),
            mscale_all_dim=Optional("mscale_all_dim", f"{p}.mscale_all_dim"),
            attention_factor=Optional("attention_factor", f"{p}.attention_factor"),
            truncate=Rename("truncate", f"{p}.truncate", default=True))),
        Variant("longrope", "longrope", section(
            short_factor=Rename("short_factor", f"{p}.short_factor", to_hf=_as_list),
            long_factor=Rename("long_factor", f"{p}.long_factor", to_hf=_as_list),
            original=original,
            factor=Optional("factor", f"{p}.factor"),
            attention_factor=Optional("attention_factor", f"{p}.attention_factor"))),
    )


def rotary_dispatch(kinds: tuple[str, ...], fraction: ConfigPrimitive | None = None,
                    prefix: str = "rope_parameters") -> Dispatch:
    """The ``attention.rotary`` dispatch restricted to ``kinds`` (others are refused both ways)."""
    fraction = fraction or ConstantImport("fraction", 1.0, "partial rotary is not supported")
    variants = tuple(v for v in rotary_variants(fraction, prefix) if v.native_kind in kinds)
    return Dispatch("attention.rotary", f"{prefix}.rope_type", variants)


def rope_dicts(rope: Any) -> list[dict]:
    """The rope parameter dicts of a ``rope_parameters``/``rope_scaling`` value: itself, or (the
    per-layer-type form of Gemma-3) each of its dict values."""
    if not isinstance(rope, dict):
        return []
    if "rope_type" in rope or "type" in rope or not all(isinstance(v, dict) for v in rope.values()):
        return [rope]
    return list(rope.values())


def has_type_alias(hf: Mapping[str, Any]) -> bool:
    """Whether a config spells the rope kind as v4 ``type`` (in ``rope_scaling`` or ``rope_parameters``)."""
    return any("type" in r for key in ("rope_scaling", "rope_parameters") for r in rope_dicts(hf.get(key)))


def with_type_alias(hf: dict[str, Any]) -> dict[str, Any]:
    """``hf`` with ``type`` written beside every ``rope_type`` (as transformers 5 keeps it)."""
    for r in rope_dicts(hf.get("rope_parameters")):
        if "rope_type" in r:
            r["type"] = r["rope_type"]
    return hf


def buildable_rotary() -> Custom:
    """Refuse a dynamic-NTK rotary over 2 dims: transformers computes its base with the exponent
    ``dim / (dim - 2)`` and cannot build the model (ZeroDivisionError). Claims nothing."""

    def export(get):
        rotary = get("attention.rotary")
        if rotary.kind == "dynamic" and rotary.rotary_dim(get("attention.head_dim")) <= 2:
            raise ConversionError("attention.rotary: a dynamic rotary over 2 dims cannot be expressed "
                                  "(transformers divides by rotary dim - 2)")
        return {}

    return Custom((), (), export, lambda hf: {})
