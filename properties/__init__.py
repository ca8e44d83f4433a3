"""The laws every converter must satisfy (DESIGN §3), as plain functions.

Each property is ``prop(converter, config, seed=0)``: ``config`` is a ``native.ModelConfig``, or an
HF config dict for ``hf_config_roundtrip``; ``seed`` drives every tensor and every other choice the
property makes (dtype, shard size, mutation values), so ``(architecture, property, config, seed)`` —
the content of a ``tests/regressions/*.json`` case — replays exactly. A broken law raises
:class:`PropertyViolation` naming the property, the architecture, the config path or tensor, and the
expected vs actual values (or the error against its tolerance).

``PROPERTIES`` maps each name to its function and to the kind of input it draws:

- ``native``: configs the converter must accept (``strategies.<arch>.native_configs()``);
- ``hf``: HF dicts in v4 and v5 forms (``strategies.<arch>.hf_configs()``);
- ``unrepresentable``: native configs the format cannot express
  (``strategies.<arch>.unrepresentable_configs()``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .checkpoint import checkpoint_roundtrip
from .config import (
    architecture_coverage, config_roundtrip, hf_config_accepted, hf_config_roundtrip, normalize,
    unrepresentable_rejected,
)
from .forward import forward_equivalence
from .violation import PropertyViolation
from .weights import bias_handling, key_bijection, tied_embeddings, weight_roundtrip

NATIVE, HF, UNREPRESENTABLE = "native", "hf", "unrepresentable"


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable[..., None]
    inputs: str  # NATIVE, HF or UNREPRESENTABLE


PROPERTIES: dict[str, Property] = {p.name: p for p in (
    Property("config_roundtrip", config_roundtrip, NATIVE),
    Property("hf_config_roundtrip", hf_config_roundtrip, HF),
    Property("hf_config_accepted", hf_config_accepted, NATIVE),
    Property("architecture_coverage", architecture_coverage, NATIVE),
    Property("unrepresentable_rejected", unrepresentable_rejected, UNREPRESENTABLE),
    Property("weight_roundtrip", weight_roundtrip, NATIVE),
    Property("key_bijection", key_bijection, NATIVE),
    Property("tied_embeddings", tied_embeddings, NATIVE),
    Property("bias_handling", bias_handling, NATIVE),
    Property("forward_equivalence", forward_equivalence, NATIVE),
    Property("checkpoint_roundtrip", checkpoint_roundtrip, NATIVE),
)}

__all__ = [
    "PROPERTIES", "Property", "PropertyViolation", "NATIVE", "HF", "UNREPRESENTABLE", "normalize",
    *PROPERTIES,
]
