"""Helpers shared by the properties: tensors compared bit for bit, conversions collected with their
refusals turned into violations, tiny HF models built from exported configs and weights.

Nothing here downloads: HF models are built from configs (``from_pretrained(None, config=...,
state_dict=...)``, which is transformers' own loading path, conversion mapping included).
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

import native
from converters import ConversionError
from converters.hf_reference import hf_config, quiet_transformers

from .violation import Reporter

#: dtypes a weight round trip must keep bit for bit.
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def rng(seed: int, salt: str = "") -> random.Random:
    """A ``random.Random`` for the non-tensor choices of one property (dtype, shard size, mutation
    values), derived from the drawn seed so a saved ``(config, seed)`` replays exactly."""
    return random.Random(f"{salt}:{int(seed)}")


def weight_dtype(seed: int) -> torch.dtype:
    """The state dtype of an example: float32 for seed 0 (what shrinking reaches), else by seed."""
    return WEIGHT_DTYPES[int(seed) % len(WEIGHT_DTYPES)]


# ----------------------------------------------------------------------------------------- tensors
def _bits(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex():
        return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (so ``-0.0 != 0.0`` and a NaN equals itself)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def describe_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    """Why two tensors are not bit-equal: dtype, shape, or where and by how much values differ."""
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    differ = _bits(a) != _bits(b)
    count = int(differ.sum())
    first = tuple(int(i) for i in differ.nonzero()[0]) if count else ()
    detail = f"{count} of {a.numel()} elements differ"
    if count:
        detail += f", first at {list(first)}: {a[first].item()!r} vs {b[first].item()!r}"
    return detail


def clone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in state.items()}


def storage_key(t: torch.Tensor) -> int | None:
    if t.device.type == "meta" or t.numel() == 0:
        return None
    return t.untyped_storage().data_ptr()


class CountingMapping(Mapping):
    """A read-only state dict that counts reads per key (to prove each tensor is consumed once)."""

    def __init__(self, data: Mapping[str, torch.Tensor]):
        self._data = data
        self.reads: dict[str, int] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        value = self._data[key]
        self.reads[key] = self.reads.get(key, 0) + 1
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def collect(report: Reporter, pairs: Iterable[tuple[str, torch.Tensor]], what: str) -> dict[str, torch.Tensor]:
    """Drain a conversion stream into a dict; a name produced twice is a violation."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in pairs:
        if name in out:
            report.fail(name, f"{what} produced this tensor twice")
        out[name] = tensor
    return out


def export_weights(report: Reporter, converter, cfg, state) -> dict[str, torch.Tensor]:
    """``converter.export_weights`` of a config it must accept; a refusal is a violation."""
    try:
        return collect(report, converter.export_weights(cfg, state), "export_weights")
    except ConversionError as exc:
        report.fail("export_weights", f"refused a config the strategy says it accepts: {exc}")


def import_weights(report: Reporter, converter, cfg, hf_state) -> dict[str, torch.Tensor]:
    try:
        return collect(report, converter.import_weights(cfg, hf_state), "import_weights")
    except ConversionError as exc:
        report.fail("import_weights", f"refused its own export: {exc}")


def export_config(report: Reporter, converter, cfg) -> dict[str, Any]:
    try:
        return converter.export_config(cfg)
    except ConversionError as exc:
        report.fail("export_config", f"refused a config the strategy says it accepts: {exc}")


def without_metadata(cfg: native.ModelConfig) -> native.ModelConfig:
    """The config with its (non-architecture) HF metadata cleared, for architecture equality."""
    import dataclasses

    return dataclasses.replace(cfg, metadata={})


def config_difference(expected: native.ModelConfig, actual: native.ModelConfig) -> list[str]:
    """Dotted paths where two native configs differ (``<structure>`` when their shapes differ)."""
    a, b = _flat(expected.to_dict()), _flat(actual.to_dict())
    paths = sorted(set(a) | set(b))
    return [f"{p}: expected {a.get(p, '<absent>')!r}, got {b.get(p, '<absent>')!r}"
            for p in paths if a.get(p, _MISSING) != b.get(p, _MISSING)]


_MISSING = object()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def flat_keys(value: Any) -> dict[str, Any]:
    """Nested dict → ``{dotted.key: leaf}`` (lists are leaves)."""
    if not isinstance(value, dict):
        return {"": value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict) and v:
            out.update({f"{k}.{sub}": leaf for sub, leaf in flat_keys(v).items()})
        else:
            out[str(k)] = v
    return out


def same_value(a: Any, b: Any) -> bool:
    """JSON-level equality that does not let ``True`` equal ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def jsonable(value: Any) -> Any:
    """Through JSON and back (tuples become lists, int dict keys strings), as config.json would."""
    return json.loads(json.dumps(value))


# -------------------------------------------------------------------------------- transformers
def causal_lm_class(config):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


#: Always eager: deterministic, supports softcapping and float64; MoE experts as a python loop.
HF_IMPLEMENTATION = {"attn_implementation": "eager", "experts_implementation": "eager"}


def hf_disk_shapes(hf: Mapping[str, Any], dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of the HF checkpoint ``save_pretrained`` would write for this
    config: the model's state dict minus tied weights, through transformers' reverse conversion
    mapping (MoE models fuse experts in memory but store them per expert)."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    model = empty_hf_model(hf, dtype)
    state = remove_tied_weights_from_state_dict(dict(model.state_dict()), model)
    state = revert_weight_conversion(model, state)
    return {name: (tuple(t.shape), t.dtype) for name, t in state.items()}


def empty_hf_model(hf: Mapping[str, Any], dtype: torch.dtype = torch.float32):
    """The HF model of a config with randomly initialised weights, for its names, shapes and tied
    weights. (Tiny models, so plain CPU tensors: faster than a ``meta`` device context; and
    ``no_init_weights`` would also skip the weight tying.)"""
    config = hf_config(hf)
    with quiet_transformers():
        return causal_lm_class(config)._from_config(config, dtype=dtype, **HF_IMPLEMENTATION)


def hf_model(report: Reporter, hf: Mapping[str, Any], state: Mapping[str, torch.Tensor], dtype: torch.dtype,
             device: str = "cpu", attention: str = "eager"):
    """The HF model of an exported config with exported weights, loaded the way users load it, with
    ``attention`` as its ``attn_implementation``. A missing, unexpected or mis-shaped tensor is a
    violation."""
    config = hf_config(hf)
    cls = causal_lm_class(config)
    with quiet_transformers():
        model, info = cls.from_pretrained(None, config=config, state_dict={k: v for k, v in state.items()},
                                          dtype=dtype, output_loading_info=True,
                                          **{**HF_IMPLEMENTATION, "attn_implementation": attention})
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(map(str, info.get(kind) or ()))
        if keys:
            report.fail(keys[0], f"{cls.__name__}.from_pretrained reports {kind.replace('_', ' ')}: {keys[:6]}")
    if info.get("error_msgs"):
        report.fail("from_pretrained", "; ".join(map(str, info["error_msgs"]))[:500])
    return model.to(device).eval()


def native_model(cfg: native.ModelConfig, state: Mapping[str, torch.Tensor], dtype: torch.dtype,
                 device: str = "cpu") -> native.NativeModel:
    """The native model holding (copies of) ``state`` in ``dtype``. (Built on the CPU and then
    given the state: for these tiny models that is far faster than a ``meta`` device context.)"""
    model = native.NativeModel(cfg)
    model.load_state_dict({k: v.to(device=device, dtype=dtype, copy=True) for k, v in state.items()},
                          strict=True, assign=True)
    return model.eval()
