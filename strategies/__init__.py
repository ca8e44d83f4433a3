"""Hypothesis strategies for native and HF configs.

- :mod:`strategies.building_blocks`: shared pieces (head layouts, rotary kinds, norms, biases,
  MLP/MoE shapes, layer patterns, forward lengths).
- :mod:`strategies.generic`: ``native_configs(**constraints)``, any native config.
- ``strategies/<model_type>.py``, one per converter: ``native_configs()`` (configs the converter
  must accept), and ``hf_configs()`` / ``unrepresentable_configs()`` where written.

:func:`for_architecture` finds an architecture's module by its HF ``model_type``, so adding
``strategies/<model_type>.py`` next to the converter is all the suite needs.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from .generic import native_configs

#: Modules of this package that are not per-architecture strategies.
SHARED_MODULES = frozenset({"building_blocks", "generic"})


def for_architecture(model_type: str) -> ModuleType:
    """The strategy module of one architecture (``strategies.<model_type>``)."""
    if model_type in SHARED_MODULES or not model_type.isidentifier():
        raise KeyError(f"{model_type!r} is not an architecture strategy module")
    try:
        return importlib.import_module(f"{__name__}.{model_type}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{model_type}":
            raise KeyError(f"no strategy module strategies/{model_type}.py; known: {architectures()}") from None
        raise


def architectures() -> list[str]:
    """model_types that have a strategy module, sorted. A module of this package is an architecture
    module when it defines ``native_configs`` (helper modules such as ``moe_common`` do not)."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in SHARED_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "native_configs", None)):
            names.append(info.name)
    return sorted(names)


__all__ = ["native_configs", "for_architecture", "architectures"]
