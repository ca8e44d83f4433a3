"""One converter per HF ``model_type``: lookup by name or by an HF config dict."""
from __future__ import annotations

from typing import Any, Mapping

from .base import Converter
from .errors import ConversionError

_REGISTRY: dict[str, Converter] = {}


def register(converter: Converter) -> Converter:
    if converter.model_type in _REGISTRY:
        raise ValueError(f"model_type {converter.model_type!r} registered twice")
    _REGISTRY[converter.model_type] = converter
    return converter


def get(model_type: str) -> Converter:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise ConversionError(f"unknown model_type {model_type!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def detect(hf_config: Mapping[str, Any]) -> Converter:
    """By ``model_type``, else by ``architectures``."""
    model_type = hf_config.get("model_type")
    if model_type is not None:
        return get(model_type)
    for name in hf_config.get("architectures") or ():
        for converter in _REGISTRY.values():
            if converter.architecture == name:
                return converter
    raise ConversionError("config.json: no model_type, and architectures "
                          f"{hf_config.get('architectures')!r} name no known converter")


def names() -> list[str]:
    return sorted(_REGISTRY)


def all_converters() -> list[Converter]:
    return [_REGISTRY[name] for name in names()]
