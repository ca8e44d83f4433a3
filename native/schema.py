"""Generic machinery for the nested, frozen config dataclasses.

Why a module of its own: the *architecture* marking, the dotted-path walk and the lossless JSON
form are one mechanism shared by every section, so each section class only declares its fields.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, ClassVar, Iterator

#: decoder layers a config may declare (the deepest public models have about 130): planning
#: walks every layer, so an absurd count in an untrusted config must be refused before it starts.
#: Here, not in the checkpoint readers, because the HF config check (``converters.config_values``)
#: and the native reader both apply it, and ``converters`` does not depend on the I/O package.
MAX_LAYERS = 4096


class ConfigError(ValueError):
    """An invalid native config. The message names the offending field by its dotted path."""


def architecture(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field that changes the forward pass: converters must claim it and tests must vary it."""
    return dataclasses.field(default=default, metadata={"architecture": True}, **kwargs)


def setting(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field that does not change the forward pass (init std, dropout, carried HF metadata)."""
    return dataclasses.field(default=default, metadata={"architecture": False}, **kwargs)


def is_architecture(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get("architecture", False))


class Section:
    """Base of every config section. Polymorphic sections set ``kind`` as a ClassVar tag."""

    kind: ClassVar[str] = ""

    def _set(self, name: str, value: Any) -> None:
        # Sections are frozen; __post_init__ normalises lists to tuples through this.
        object.__setattr__(self, name, value)

    def _tuple(self, name: str, convert=lambda v: v) -> None:
        value = getattr(self, name)
        if value is not None:
            self._set(name, tuple(convert(v) for v in value))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a section class (cached: resolving them is most of the cost of
    ``from_plain``, which every import_config and checkpoint read runs)."""
    return typing.get_type_hints(cls)


def _variants(hint: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _section_variants(hint: Any) -> list[type]:
    return [v for v in _variants(hint) if isinstance(v, type) and issubclass(v, Section)]


def to_plain(value: Any) -> Any:
    """Section → JSON-ready dict (polymorphic sections carry their ``kind``)."""
    if isinstance(value, Section):
        out: dict[str, Any] = {"kind": value.kind} if value.kind else {}
        for f in dataclasses.fields(value):
            out[f.name] = to_plain(getattr(value, f.name))
        return out
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def from_plain(hint: Any, value: Any, path: str) -> Any:
    """Inverse of :func:`to_plain`, guided by the type hint. Unknown keys raise ConfigError."""
    sections = _section_variants(hint)
    if sections and isinstance(value, dict):
        if len(sections) == 1 and not sections[0].kind:
            cls = sections[0]
        else:
            by_kind = {c.kind: c for c in sections}
            kind = value.get("kind", "" if "" in by_kind else None)  # a kind-less section is the default variant
            if kind not in by_kind:
                raise ConfigError(f"{path}.kind={kind!r} is not one of {sorted(by_kind)}")
            cls = by_kind[kind]
        return section_from_plain(cls, value, path)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(from_plain(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for variant in typing.get_args(hint):
            if typing.get_origin(variant) is tuple and isinstance(value, list):
                return from_plain(variant, value, path)
    return value


def section_from_plain(cls: type, data: dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be an object, got {type(data).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"kind"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} for {cls.__name__}")
    kwargs = {
        name: from_plain(hints[name], value, f"{path}.{name}" if path else name)
        for name, value in data.items()
        if name != "kind"
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required field
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def walk_fields(section: Section, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """Yield (dotted_path, field, value) for every leaf field of a config instance."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        path = f"{prefix}{f.name}"
        if isinstance(value, Section):
            if value.kind:  # the variant of a polymorphic section is itself a choice of architecture
                yield f"{path}.kind", f, value.kind
            yield from walk_fields(value, path + ".")
        elif isinstance(value, tuple) and value and all(isinstance(v, Section) for v in value):
            for i, item in enumerate(value):
                if item.kind:
                    yield f"{path}[{i}].kind", f, item.kind
                yield from walk_fields(item, f"{path}[{i}].")
        else:
            yield path, f, value


def architecture_fields(config: Section) -> list[str]:
    """Dotted paths of every architecture field of this config instance (what must be converted)."""
    return [path for path, f, _ in walk_fields(config) if is_architecture(f)]


def get_path(config: Section, path: str) -> Any:
    value: Any = config
    for part in _split(path):
        value = value[part] if isinstance(part, int) else getattr(value, part)
    return value


def replace_path(config: Section, path: str, new: Any) -> Any:
    """Return a copy of ``config`` with the field at ``path`` replaced (validation re-runs)."""
    parts = _split(path)
    return _replace(config, parts, new)


def _replace(value: Any, parts: list, new: Any) -> Any:
    if not parts:
        return new
    head, rest = parts[0], parts[1:]
    if isinstance(head, int):
        items = list(value)
        items[head] = _replace(items[head], rest, new)
        return tuple(items)
    return dataclasses.replace(value, **{head: _replace(getattr(value, head), rest, new)})


def _split(path: str) -> list:
    parts: list = []
    for piece in path.split("."):
        while "[" in piece:
            name, _, tail = piece.partition("[")
            if name:
                parts.append(name)
            index, _, piece = tail.partition("]")
            parts.append(int(index))
        if piece:
            parts.append(piece)
    return parts


def nonfinite_path(value: Any, where: str = "") -> str | None:
    """The dotted path of the first NaN or infinity inside ``value`` (dicts and lists), or None."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path or "the value"
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{k}]") for k, v in reversed(list(enumerate(item))))
    return None


# ------------------------------------------------------------------ field checks, named by path
def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def positive(section: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
           f"{section}.{name}={value!r} must be positive")


def positive_int(section: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
           f"{section}.{name}={value!r} must be a positive integer")

