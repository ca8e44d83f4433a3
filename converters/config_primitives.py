"""Declarative config primitives: each one claims native paths and HF keys and converts both ways.

One declaration drives export, import and the coverage checks: a primitive states which native
paths (relative to its section) and which HF keys (dotted, for nested dicts such as
``rope_parameters.factor``) it owns, and gives both directions beside each other.

Conventions:
- ``export(get)`` receives ``get(path)`` reading the native value at a path relative to the
  section, and returns ``{hf_key: value}``.
- ``import_(hf)`` receives an :class:`HFView` and returns ``{native_path: value}`` in plain (JSON)
  form; polymorphic sections are given as ``{"kind": ..., ...}`` dicts.
- Refusals raise :class:`ConversionError` naming the native path or HF key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import ConversionError

REQUIRED = object()  # sentinel: the HF key has no default, its absence is an error


class HFView:
    """Read access to an HF config dict by dotted key (``rope_parameters.factor``)."""

    def __init__(self, data: Mapping[str, Any]):
        self.data = data

    def has(self, key: str) -> bool:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True

    def get(self, key: str, default: Any = REQUIRED) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is REQUIRED:
                    raise ConversionError(f"config.json: missing required key '{key}'")
                return default
            node = node[part]
        return node


def as_json(value: Any) -> Any:
    """``value`` as config.json holds it (the native metadata is JSON too): integer dict keys
    (transformers' ``id2label``) become strings, tuples lists. Representation only."""
    import json

    return json.loads(json.dumps(value))


def set_dotted(target: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


class ConfigPrimitive:
    """Base: subclasses set ``native_paths``/``hf_keys`` and implement both directions."""

    native_paths: tuple[str, ...] = ()
    hf_keys: tuple[str, ...] = ()

    def export(self, get: Callable[[str], Any]) -> dict[str, Any]:
        raise NotImplementedError

    def import_(self, hf: HFView) -> dict[str, Any]:
        raise NotImplementedError

    def claimed_hf(self, hf: HFView) -> set[str]:
        """HF keys this primitive accounts for in a given dict (dispatch narrows it to one variant)."""
        return set(self.hf_keys)

    def all_native_paths(self) -> set[str]:
        """Every native path this primitive can claim, across all variants (static coverage)."""
        return set(self.native_paths)


#: What a primitive pairing one native path (its ``native`` field) with one HF key (its ``hf``
#: field) claims: the class attributes ``native_paths = CLAIMS_NATIVE_FIELD``, ``hf_keys = CLAIMS_HF_FIELD``.
CLAIMS_NATIVE_FIELD = property(lambda self: (self.native,))
CLAIMS_HF_FIELD = property(lambda self: (self.hf,))


def _read(hf: HFView, key: str, default: Any) -> Any:
    return hf.get(key, default)


@dataclass(frozen=True)
class Rename(ConfigPrimitive):
    """native path ↔ HF key, same value. ``default``: HF class default when the key is absent."""

    native: str
    hf: str
    default: Any = REQUIRED
    to_hf: Callable[[Any], Any] | None = None  # representation only (tuple → list), never semantics
    to_native: Callable[[Any], Any] | None = None

    native_paths, hf_keys = CLAIMS_NATIVE_FIELD, CLAIMS_HF_FIELD

    def export(self, get):
        value = get(self.native)
        return {self.hf: self.to_hf(value) if self.to_hf else value}

    def import_(self, hf):
        value = _read(hf, self.hf, self.default)
        return {self.native: self.to_native(value) if self.to_native and value is not None else value}


@dataclass(frozen=True)
class Mapped(ConfigPrimitive):
    """Rename through a value table (e.g. activation names); unknown values are refused both ways."""

    native: str
    hf: str
    table: tuple[tuple[Any, Any], ...]  # (native value, hf value) pairs; first pair wins on export
    default: Any = REQUIRED

    native_paths, hf_keys = CLAIMS_NATIVE_FIELD, CLAIMS_HF_FIELD

    def export(self, get):
        value = get(self.native)
        for native_value, hf_value in self.table:
            if native_value == value:
                return {self.hf: hf_value}
        raise ConversionError(f"{self.native}={value!r} cannot be expressed as '{self.hf}' "
                              f"(supported: {sorted({str(n) for n, _ in self.table})})")

    def import_(self, hf):
        value = _read(hf, self.hf, self.default)
        for native_value, hf_value in self.table:
            if hf_value == value:
                return {self.native: native_value}
        raise ConversionError(f"config.json: {self.hf}={value!r} is not supported "
                              f"(supported: {sorted({str(h) for _, h in self.table})})")


@dataclass(frozen=True)
class ConstantExport(ConfigPrimitive):
    """An HF key with one legal value: written on export, asserted on import (absent is fine)."""

    hf: str
    value: Any

    hf_keys = CLAIMS_HF_FIELD

    def export(self, get):
        return {self.hf: self.value}

    def import_(self, hf):
        if hf.has(self.hf) and hf.get(self.hf) != self.value:
            raise ConversionError(f"config.json: {self.hf}={hf.get(self.hf)!r} is not supported "
                                  f"(only {self.value!r})")
        return {}


@dataclass(frozen=True)
class ConstantImport(ConfigPrimitive):
    """A native field the HF format cannot vary: set on import, asserted on export.

    This is how an architecture refuses native features it cannot express."""

    native: str
    value: Any
    reason: str = ""

    native_paths = CLAIMS_NATIVE_FIELD

    def export(self, get):
        actual = get(self.native)
        if actual != self.value:
            why = f": {self.reason}" if self.reason else ""
            raise ConversionError(f"{self.native}={_short(actual)} cannot be expressed "
                                  f"(this format requires {_short(self.value)}){why}")
        return {}

    def import_(self, hf):
        return {self.native: self.value}


@dataclass(frozen=True)
class Default(ConfigPrimitive):
    """Like Rename, but an absent HF key is computed from the other HF keys."""

    native: str
    hf: str
    compute: Callable[[HFView], Any]

    native_paths, hf_keys = CLAIMS_NATIVE_FIELD, CLAIMS_HF_FIELD

    def export(self, get):
        return {self.hf: get(self.native)}

    def import_(self, hf):
        value = hf.get(self.hf, None)
        return {self.native: self.compute(hf) if value is None else value}


@dataclass(frozen=True)
class Optional(ConfigPrimitive):
    """Written only when the native value differs from ``sentinel``; absent (or null) on import
    means the sentinel. Sliding windows and softcaps are the usual case."""

    native: str
    hf: str
    sentinel: Any = None
    write_sentinel: bool = False  # True: write the sentinel explicitly (e.g. ``"sliding_window": null``)

    native_paths, hf_keys = CLAIMS_NATIVE_FIELD, CLAIMS_HF_FIELD

    def export(self, get):
        value = get(self.native)
        if value == self.sentinel and not self.write_sentinel:
            return {}
        return {self.hf: value}

    def import_(self, hf):
        value = hf.get(self.hf, self.sentinel)
        return {self.native: self.sentinel if value is None else value}


@dataclass(frozen=True)
class Carried(ConfigPrimitive):
    """HF keys that do not change the forward pass but must survive HF→native→HF (token ids,
    initializer_range, dropout, use_cache…): kept in the native config's ``metadata``."""

    keys: tuple[str, ...]

    @property
    def hf_keys(self):
        return self.keys

    @property
    def native_paths(self):
        return ("metadata",)

    def export(self, get):
        metadata = get("metadata")
        return {key: metadata[key] for key in self.keys if key in metadata}

    def import_(self, hf):
        return {f"metadata.{key}": as_json(hf.get(key)) for key in self.keys if hf.has(key)}


@dataclass(frozen=True)
class Custom(ConfigPrimitive):
    """Many-to-many: explicit functions for both directions over declared paths and keys."""

    native: tuple[str, ...]
    hf: tuple[str, ...]
    export_fn: Callable[..., dict[str, Any]]  # (get) -> {hf_key: value}
    import_fn: Callable[[HFView], dict[str, Any]]  # (hf) -> {native_path: value}

    @property
    def native_paths(self):
        return self.native

    @property
    def hf_keys(self):
        return self.hf

    def export(self, get):
        return self.export_fn(get)

    def import_(self, hf):
        return self.import_fn(hf)


@dataclass(frozen=True)
class Nested(ConfigPrimitive):
    """A sub-section: prefixes the native paths of its primitives (and optionally the HF keys)."""

    native_prefix: str
    section: Mapping[str, ConfigPrimitive]
    hf_prefix: str = ""

    def _n(self, path: str) -> str:
        return f"{self.native_prefix}.{path}" if self.native_prefix else path

    def _h(self, key: str) -> str:
        return f"{self.hf_prefix}.{key}" if self.hf_prefix else key

    def export(self, get):
        out = {}
        for primitive in self.section.values():
            for key, value in primitive.export(lambda p: get(self._n(p))).items():
                out[self._h(key)] = value
        return out

    def import_(self, hf):
        view = HFView(hf.get(self.hf_prefix, {})) if self.hf_prefix else hf
        out = {}
        for primitive in self.section.values():
            for path, value in primitive.import_(view).items():
                out[self._n(path)] = value
        return out

    def claimed_hf(self, hf):
        view = HFView(hf.get(self.hf_prefix, {})) if self.hf_prefix else hf
        return {self._h(k) for p in self.section.values() for k in p.claimed_hf(view)}

    @property
    def hf_keys(self):
        return tuple(self._h(k) for p in self.section.values() for k in p.hf_keys)

    def all_native_paths(self):
        return {self._n(p) for prim in self.section.values() for p in prim.all_native_paths()}


@dataclass(frozen=True)
class Variant:
    """One branch of a Dispatch: the native section kind, the HF discriminator value, its section."""

    native_kind: str
    hf_value: Any
    section: Mapping[str, ConfigPrimitive] = field(default_factory=dict)


@dataclass(frozen=True)
class Dispatch(ConfigPrimitive):
    """A polymorphic sub-section (rotary kind, MLP vs MoE): the native variant is chosen by the
    section's ``kind``, the HF one by ``hf_key``'s value; each variant has its own primitives."""

    native: str  # path of the polymorphic native section
    hf_key: str  # the HF discriminator key (dotted); "" when the HF side has none
    variants: tuple[Variant, ...]
    hf_default: Any = REQUIRED  # discriminator value when the HF key is absent

    def _by_native(self, kind: str) -> Variant:
        for variant in self.variants:
            if variant.native_kind == kind:
                return variant
        raise ConversionError(f"{self.native}.kind={kind!r} cannot be expressed "
                              f"(supported: {[v.native_kind for v in self.variants]})")

    def _by_hf(self, hf: HFView) -> Variant:
        value = hf.get(self.hf_key, self.hf_default) if self.hf_key else self.variants[0].hf_value
        for variant in self.variants:
            if variant.hf_value == value:
                return variant
        raise ConversionError(f"config.json: {self.hf_key}={value!r} is not supported "
                              f"(supported: {[v.hf_value for v in self.variants]})")

    def export(self, get):
        section_value = get(self.native)
        if section_value is None:  # an optional section (q/k norm) that this format requires
            raise ConversionError(f"{self.native}=None cannot be expressed "
                                  f"(supported: {[v.native_kind for v in self.variants]})")
        variant = self._by_native(section_value.kind)
        out = {self.hf_key: variant.hf_value} if self.hf_key else {}
        out.update(Nested(self.native, variant.section).export(get))
        return out

    def import_(self, hf):
        variant = self._by_hf(hf)
        out = {f"{self.native}.kind": variant.native_kind}
        out.update(Nested(self.native, variant.section).import_(hf))
        return out

    def claimed_hf(self, hf):
        variant = self._by_hf(hf)
        keys = {self.hf_key} if self.hf_key else set()
        return keys | Nested(self.native, variant.section).claimed_hf(hf)

    @property
    def hf_keys(self):
        keys = {self.hf_key} if self.hf_key else set()
        for v in self.variants:
            keys |= set(Nested(self.native, v.section).hf_keys)
        return tuple(sorted(keys))

    def all_native_paths(self):
        paths = {self.native, f"{self.native}.kind"}
        for v in self.variants:
            paths |= Nested(self.native, v.section).all_native_paths()
        return paths


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def merge_alias(hf: dict[str, Any], alias: str, key: str) -> dict[str, Any]:
    """HF ``attribute_map`` aliases (``num_experts`` → ``num_local_experts``): read either, refuse
    both with different values (transformers itself would pick one silently, and not consistently
    across classes)."""
    if alias not in hf:
        return hf
    out = dict(hf)
    value = out.pop(alias)
    if key in out and out[key] != value:
        raise ConversionError(f"config.json: {alias}={value!r} and {key}={out[key]!r} are the same setting "
                              "and disagree")
    out[key] = value
    return out
