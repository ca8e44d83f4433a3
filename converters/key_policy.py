"""Which HF config keys a converter must understand, and which it may carry without understanding.

The rule, derived from the installed transformers rather than from a hand-kept list:

- a key that the architecture's config class **defines** (a parameter of its ``__init__``, a name in
  its ``attribute_map``, or one of ``PretrainedConfig``'s own parameters), or that the class
  **consumes** (building the class with the key changes another attribute, or does not keep the
  key as given: a legacy alias such as ``rope_scaling``), can change the model. It must be claimed
  by a declaration, or the config is refused;
- any other top-level key is stored by transformers as an inert attribute that no code in the
  library reads (``is_llama_config``, ``mlp_type``, ``auto_map``, ``use_bfloat16``…). It cannot
  change the in-library forward pass, so it is carried verbatim in the native metadata under
  :data:`EXTRA_KEY` and written back unchanged. Nothing is dropped.

A few keys describe the file rather than the model (:data:`FILE_KEYS`): the writer regenerates them
(``architectures``, ``dtype``, ``transformers_version``) or transformers sets them on loading
(``_name_or_path``, ``_commit_hash``).
"""
from __future__ import annotations

import functools
import inspect
import json
from typing import Any

from .hf_reference import quiet_transformers

#: native ``metadata`` entry holding the HF keys carried verbatim: ``{key: value}``.
EXTRA_KEY = "hf_extra"

#: Keys that describe the config file or how it was loaded, not the model: regenerated on export.
FILE_KEYS = frozenset({"architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
                       "_commit_hash", "_attn_implementation_autoset"})

_MISSING = object()


def config_class(model_type: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]


@functools.cache
def defined_keys(model_type: str) -> frozenset[str]:
    """Keys the transformers config class of ``model_type`` defines: its ``__init__`` parameters
    and ``attribute_map``, and ``PretrainedConfig``'s."""
    from transformers import PretrainedConfig

    keys: set[str] = set()
    for cls in (config_class(model_type), PretrainedConfig):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and name != "self":
                keys.add(name)
        keys |= set(getattr(cls, "attribute_map", {}) or {})
    return frozenset(keys)


@functools.cache
def _default_dict(model_type: str) -> str:
    with quiet_transformers():
        return _canonical_json(config_class(model_type)().to_dict())


@functools.cache
def _consumed(model_type: str, key: str, value_json: str) -> bool:
    value = json.loads(value_json)
    try:
        with quiet_transformers():
            built = config_class(model_type)(**{key: value}).to_dict()
    except Exception:  # the class validates the key: it reads it
        return True
    if _canonical_json(built.pop(key, _MISSING)) != value_json:
        return True
    base = json.loads(_default_dict(model_type))
    base.pop(key, None)
    return _canonical_json(built) != _canonical_json(base)


def understood_by_transformers(model_type: str, key: str, value: Any) -> bool:
    """True when ``key`` (a top-level HF key, with this value) can change the model: defined or
    consumed by the config class (see the module docstring)."""
    if key in defined_keys(model_type):
        return True
    try:
        probes = [_canonical_json(v) for v in (value, *_other_values(value))]
    except (TypeError, ValueError):
        return True  # not JSON: not a config.json value we can carry
    return any(_consumed(model_type, key, probe) for probe in probes)


def _other_values(value: Any) -> tuple:
    """Probe values besides the given one: a value equal to the class default would hide a key
    that the class reads (``rope_theta: 10000``)."""
    if isinstance(value, bool):
        return (not value,)
    if isinstance(value, (int, float)):
        return (value * 2 + 1,)
    if isinstance(value, str):
        return (value + "_probe",)
    return ()


def _canonical_json(value: Any) -> str:
    if value is _MISSING:
        return "<missing>"
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(value: Any):
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
