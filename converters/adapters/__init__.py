"""The adapter protocol: how convcheck's laws reach a converter it did not write.

An adapter connects one *foreign* checkpoint format (a training framework's own config and state
dict) to HF ``transformers``. The properties of :mod:`properties.adapter_laws` draw HF configs with
the existing ``strategies.<model_type>.hf_configs()`` and check, for every one, what can be stated on
the HF side: HF → foreign → HF bit-exact, the config back unchanged, the exported names equal to
transformers' own, the tied head, the biases, and (when the adapter gives ``forward``) the foreign
model's logits against HF's.

An adapter is any object with these attributes (subclass :class:`Adapter` for the defaults and the
docs, or duck-type it):

``name``
    a short name for reports, e.g. ``"litgpt"``.
``model_types``
    the HF ``model_type`` values it handles.
``import_config(hf: dict) -> foreign_config``
    the foreign config for an HF ``config.json`` dict. Raise :class:`NotRepresentable` naming the HF
    key when the format cannot express it: that is coverage (counted and reported), never a failure.
    Any other exception is a failure.
``export_config(foreign_config) -> dict``
    the HF ``config.json`` dict.
``import_weights(foreign_config, hf_tensors) -> foreign state``
    ``hf_tensors`` is a read-only mapping of HF tensor names to tensors (each may be read once);
    return a mapping or an iterable of ``(name, tensor)`` pairs.
``export_weights(foreign_config, foreign_state) -> HF tensors``
    a mapping or an iterable of ``(name, tensor)`` pairs, with the names ``save_pretrained`` writes.
``forward(foreign_config, foreign_state, input_ids, dtype) -> logits`` (optional)
    the framework's own model in ``dtype`` (``torch.float64`` or ``torch.float32``), logits of shape
    ``(batch, tokens, vocab)``. Set ``forward = None`` (the default of :class:`Adapter`) when the
    framework has no model to run here.

Our own converters are adapters too (native is their foreign format): :class:`converters.base.Converter`
has these methods, and ``--adapter native`` runs the same laws over every registered converter.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any, Callable, ClassVar

import torch

from ..errors import ConversionError

#: adapters shipped with convcheck, by name: ``module:attribute`` of a list or an adapter
BUILTIN = {
    "native": "converters.adapters.native:adapters",
    "litgpt": "converters.adapters.litgpt:LitGPTAdapter",
    "torchtune": "converters.adapters.torchtune:TorchtuneAdapter",
}


class NotRepresentable(Exception):
    """The foreign format cannot express this HF config, because of ``field``: coverage, not a bug."""

    def __init__(self, field: str, reason: str = ""):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}" if reason else field)


class Adapter:
    """Base class of an adapter (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    forward: Callable[..., torch.Tensor] | None = None

    def import_config(self, hf: dict[str, Any]) -> Any:
        raise NotImplementedError

    def export_config(self, foreign: Any) -> dict[str, Any]:
        raise NotImplementedError

    def import_weights(self, foreign: Any, hf_tensors: Mapping[str, torch.Tensor]):
        raise NotImplementedError

    def export_weights(self, foreign: Any, state: Any):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<adapter {adapter_name(self)}: {', '.join(self.model_types)}>"


def adapter_name(adapter: Any) -> str:
    return getattr(adapter, "name", "") or type(adapter).__name__


def as_mapping(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], what: str) -> dict[str, torch.Tensor]:
    """A mapping or a stream of ``(name, tensor)`` pairs as a dict; a name given twice is an error
    (a stream that writes one tensor twice would overwrite it on disk)."""
    if isinstance(tensors, Mapping):
        return dict(tensors)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        if name in out:
            raise ConversionError(f"{what}: tensor {name!r} produced twice")
        out[name] = tensor
    return out


def load(spec: str) -> list[Any]:
    """The adapters named by ``spec``: a built-in name (``native``, ``litgpt``, ``torchtune``) or
    ``module:attribute``, where the attribute is an adapter, an adapter class (instantiated with no
    arguments) or a list of adapters."""
    target = BUILTIN.get(spec, spec)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--adapter {spec!r}: expected one of {sorted(BUILTIN)} or MODULE:ATTRIBUTE")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = f" (install it with: pip install -e .[{spec}])" if spec in BUILTIN else ""
        raise ValueError(f"--adapter {spec!r}: cannot import {module_name}: {exc}{extra}") from exc
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"--adapter {spec!r}: {module_name} has no attribute {attr!r}") from None
    if isinstance(value, type):
        value = value()
    elif callable(value) and not hasattr(value, "import_config"):
        value = value()
    adapters = list(value) if isinstance(value, (list, tuple)) else [value]
    for adapter in adapters:
        missing = [m for m in ("model_types", "import_config", "export_config", "import_weights", "export_weights")
                   if not hasattr(adapter, m)]
        if missing:
            raise ValueError(f"--adapter {spec!r}: {adapter!r} lacks {', '.join(missing)} (see converters.adapters)")
    return adapters
