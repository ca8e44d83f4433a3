"""The engine that turns a converter's declaration into export, import and coverage.

A declaration has two sections of primitives:
- ``model``: paths relative to :class:`native.ModelConfig` (hidden size, embeddings, head, …);
- ``layer``: paths relative to one :class:`native.BlockConfig`. HF configs are flat, so a uniform
  layer primitive must export the same HF value for every layer (a per-layer difference the format
  cannot hold is refused, naming the layers), and on import its value is broadcast to all layers.
  :class:`LayerwisePrimitive` handles keys that *do* vary by layer (``layer_types``).

The number of layers is the one fact the engine owns itself (``layers_key``, claiming
``decoder.pattern``).

Keys no primitive claims follow :mod:`converters.key_policy`: a key transformers' config class
defines or consumes is refused; any other top-level key is carried verbatim in
``metadata.hf_extra`` and written back unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import native
from native.schema import ConfigError, from_plain

from . import key_policy
from .config_primitives import ConfigPrimitive, HFView, as_json, set_dotted
from .errors import ConversionError

LAYER_PREFIX = "decoder.blocks[*]."


class LayerwisePrimitive:
    """A primitive over all layers at once: HF keys whose value depends on the layer index."""

    native_paths: tuple[str, ...] = ()  # relative to a block
    hf_keys: tuple[str, ...] = ()

    def export(self, layers: Sequence[native.BlockConfig], get_model) -> dict[str, Any]:
        raise NotImplementedError

    def import_(self, hf: HFView, num_layers: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """→ (per-layer ``{block path: value}``, model-level ``{model path: value}``, e.g. metadata)."""
        raise NotImplementedError

    def claimed_hf(self, hf: HFView) -> set[str]:
        return set(self.hf_keys)

    def all_native_paths(self) -> set[str]:
        return set(self.native_paths)


@dataclass(frozen=True)
class Declaration:
    model: Mapping[str, ConfigPrimitive]
    layer: Mapping[str, ConfigPrimitive | LayerwisePrimitive]
    layers_key: str = "num_hidden_layers"
    model_type: str = ""  # the transformers config class that decides which unclaimed keys are carried

    # ------------------------------------------------------------------------------- export
    def export(self, cfg: native.ModelConfig) -> dict[str, Any]:
        out: dict[str, Any] = {}
        owners: dict[str, str] = {}

        def merge(items: dict[str, Any], owner: str) -> None:
            for key, value in items.items():
                if key in out and not _same(out[key], value):
                    raise ConversionError(
                        f"'{key}' would need two values: {owner} gives {value!r} but {owners[key]} gives "
                        f"{out[key]!r}; this format has one '{key}'")
                out[key] = value
                owners.setdefault(key, owner)

        get_model = lambda path: native.get_path(cfg, path)  # noqa: E731
        for name, primitive in self.model.items():
            merge(primitive.export(get_model), _owner(primitive, ""))
        merge({self.layers_key: cfg.num_layers}, "decoder.pattern")

        layers = cfg.decoder.layers()
        extra = cfg.metadata.get(key_policy.EXTRA_KEY)
        for name, primitive in self.layer.items():
            if isinstance(primitive, LayerwisePrimitive):
                merge(primitive.export(layers, get_model), _owner(primitive, "decoder.blocks[*]."))
                continue
            first: dict[str, Any] | None = None
            for i, block in enumerate(layers):
                try:
                    items = primitive.export(lambda path, b=block: native.get_path(b, path))
                except ConversionError as exc:
                    raise ConversionError(f"layer {i} (decoder.blocks[{cfg.decoder.pattern[i]}]): {exc}") from None
                if first is None:
                    first = items
                elif not _same(items, first):
                    paths = ", ".join(primitive.all_native_paths()) or name
                    raise ConversionError(
                        f"layers 0 and {i} differ in {paths} ({first} vs {items}); "
                        f"this format needs one value for all layers")
            merge(first or {}, _owner(primitive, f"decoder.blocks[{cfg.decoder.pattern[0]}]."))
        out = _nest(out)
        for key, value in self._checked_extra(extra).items():
            if key in out:
                raise ConversionError(f"metadata.{key_policy.EXTRA_KEY}.{key} would overwrite the declared '{key}'")
            out[key] = value
        return out

    def _checked_extra(self, extra: Any) -> dict[str, Any]:
        """The verbatim keys of ``metadata.hf_extra``: refused when transformers reads them (they
        would bypass the declaration)."""
        if extra is None:
            return {}
        where = f"metadata.{key_policy.EXTRA_KEY}"
        if not isinstance(extra, Mapping):
            raise ConversionError(f"{where} must map HF keys to values, got {type(extra).__name__}")
        claimed = self.claimed_hf_keys()
        for key, value in extra.items():
            if key in claimed or key in key_policy.FILE_KEYS:
                raise ConversionError(f"{where}.{key} cannot be carried verbatim: this converter writes '{key}' itself")
            if not self.model_type or key_policy.understood_by_transformers(self.model_type, key, value):
                raise ConversionError(f"{where}.{key} cannot be carried verbatim: transformers' {self.model_type} "
                                      "config reads it, so a declaration must claim it")
        return dict(extra)

    # ------------------------------------------------------------------------------- import
    def import_(self, hf_dict: Mapping[str, Any], metadata_keys: frozenset[str]) -> native.ModelConfig:
        hf = HFView(hf_dict)
        extra = self.check_hf_coverage(hf, metadata_keys)
        num_layers = hf.get(self.layers_key)
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ConversionError(f"config.json: {self.layers_key}={num_layers!r} must be a positive integer")

        plain: dict[str, Any] = {}
        for primitive in self.model.values():
            for path, value in primitive.import_(hf).items():
                set_dotted(plain, path, value)
        layers: list[dict[str, Any]] = [{} for _ in range(num_layers)]
        for primitive in self.layer.values():
            if isinstance(primitive, LayerwisePrimitive):
                per_layer, model_items = primitive.import_(hf, num_layers)
                for path, value in model_items.items():
                    set_dotted(plain, path, value)
            else:
                items = primitive.import_(hf)
                per_layer = [items] * num_layers
            for layer, items in zip(layers, per_layer):
                for path, value in items.items():
                    set_dotted(layer, path, value)
        plain["decoder"] = {"blocks": layers, "pattern": list(range(num_layers))}
        if extra:
            set_dotted(plain, f"metadata.{key_policy.EXTRA_KEY}", extra)
        try:
            return from_plain(native.ModelConfig, plain, "")
        except ConfigError as exc:
            raise ConversionError(f"config.json describes an invalid model: {exc}") from None

    # ----------------------------------------------------------------------------- coverage
    def check_hf_coverage(self, hf: HFView, metadata_keys: frozenset[str]) -> dict[str, Any]:
        """Every key of the HF dict is claimed by a primitive, is a file key (``metadata_keys``), or
        is carried verbatim (top-level keys transformers' config class neither defines nor
        consumes, see :mod:`converters.key_policy`): returns those, ``{key: value}``. Any other
        key is refused, naming it."""
        claimed = {self.layers_key}
        for primitive in [*self.model.values(), *self.layer.values()]:
            claimed |= primitive.claimed_hf(hf)
        nested_roots = {key.split(".")[0] for key in claimed if "." in key}
        extra = {}
        for key in _flatten(hf.data, nested_roots):
            if key in claimed or key in metadata_keys:
                continue
            top_level = key in hf.data and key not in nested_roots  # (a key may itself contain dots)
            if not top_level:
                raise ConversionError(f"config.json: key '{key}' inside '{key.split('.')[0]}' is not understood "
                                      "by this converter (unclaimed keys are refused, never ignored)")
            if not self.model_type or key_policy.understood_by_transformers(self.model_type, key, hf.data[key]):
                reader = f"transformers' {self.model_type} config reads it, but" if self.model_type else ""
                raise ConversionError(f"config.json: key '{key}': {reader} no declaration of this converter "
                                      "claims it (unclaimed keys are refused, never ignored)")
            extra[key] = as_json(hf.data[key])
        return extra

    def claimed_native_paths(self) -> set[str]:
        paths = {"decoder.pattern"}
        for primitive in self.model.values():
            paths |= primitive.all_native_paths()
        for primitive in self.layer.values():
            paths |= {LAYER_PREFIX + p for p in primitive.all_native_paths()}
        return paths

    def claimed_hf_keys(self) -> set[str]:
        keys = {self.layers_key}
        for primitive in [*self.model.values(), *self.layer.values()]:
            keys |= set(primitive.hf_keys)
        return keys


def unclaimed_architecture_fields(declaration: Declaration, cfg: native.ModelConfig) -> list[str]:
    """Architecture fields of ``cfg`` that no primitive claims (should be empty)."""
    claimed = declaration.claimed_native_paths()
    missing = []
    for path in native.architecture_fields(cfg):
        generic = re.sub(r"decoder\.blocks\[\d+\]\.", LAYER_PREFIX, path)
        if not any(generic == c or generic.startswith(c + ".") for c in claimed):
            missing.append(path)
    return missing


def _flatten(data: Mapping[str, Any], nested_roots: set[str], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and (prefix or key in nested_roots) and value:
            keys.extend(_flatten(value, nested_roots, full + "."))
        else:
            keys.append(full)
    return keys


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in flat:
        set_dotted(out, key, flat[key])
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (a == b and not isinstance(a, bool) and not isinstance(b, bool))


def _owner(primitive: Any, prefix: str) -> str:
    paths = sorted(primitive.all_native_paths())
    return ", ".join(prefix + p for p in paths) if paths else type(primitive).__name__
