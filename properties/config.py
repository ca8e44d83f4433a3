"""The config properties (DESIGN §3): round trips both ways, acceptance by transformers, coverage
and injectivity, refusal of what HF cannot express. Pure dict/dataclass work: no tensors.
"""
from __future__ import annotations

import json
import re
import tempfile
from typing import Any, Mapping

import native
from converters import ConversionError
from converters.hf_reference import captured_warnings

from . import common
from .common import config_difference, export_config, jsonable, same_value, without_metadata
from .mutations import first_valid
from .violation import Reporter, short

#: Keys of an HF config that describe the file, not the model. ``normalize`` drops them; every
#: other key is compared, unknown ones (``auto_map``, legacy keys) included: a converter carries
#: them verbatim. (``dtype``/``torch_dtype`` is the storage dtype of the weights, which a config
#: round trip does not carry; ``_name_or_path`` is where transformers loaded the file from.)
FILE_METADATA_KEYS = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")
#: transformers 4 wrote the rope kind as ``type``; v5 config classes keep it beside ``rope_type``.
V4_ROPE_ALIAS = "type"
#: Top-level rope keys of the v4 form, which an export must not use.
V4_ROPE_KEYS = ("rope_theta", "rope_scaling")


def normalize(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of an HF config dict, in which v4 and v5 spellings and explicit or
    implied defaults compare equal:

    1. ``transformers.AutoConfig.for_model(**hf).to_dict()``: the model's config class fills its
       defaults and rewrites v4 ``rope_theta``/``rope_scaling`` into ``rope_parameters``;
    2. through JSON (tuples become lists, as in config.json);
    3. minus :data:`FILE_METADATA_KEYS`;
    4. minus the v4 alias ``type`` inside ``rope_parameters`` (``rope_type`` carries the same
       value), also in per-layer-type rope dicts (Gemma3 nests one per attention type).
    """
    out = jsonable(common.hf_config(hf).to_dict())
    for key in FILE_METADATA_KEYS:
        out.pop(key, None)
    for rope in rope_dicts(out.get("rope_parameters")):
        rope.pop(V4_ROPE_ALIAS, None)
    return out


def rope_dicts(rope: Any) -> list[dict]:
    """The rope parameter dicts of a ``rope_parameters`` value: itself, or (per-layer-type form)
    each of its dict values."""
    if not isinstance(rope, dict):
        return []
    if "rope_type" in rope or V4_ROPE_ALIAS in rope or not all(isinstance(v, dict) for v in rope.values()):
        return [rope]
    return list(rope.values())


def dict_difference(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ (``<absent>`` when a side lacks the key)."""
    a, b = common.flat_keys(dict(expected)), common.flat_keys(dict(actual))
    absent = "<absent>"
    return [f"{k}: expected {short(a.get(k, absent), 80)}, got {short(b.get(k, absent), 80)}"
            for k in sorted(set(a) | set(b)) if not same_value(a.get(k, absent), b.get(k, absent))]


def _import(report: Reporter, converter, hf: Mapping[str, Any], what: str) -> native.ModelConfig:
    try:
        return converter.import_config(hf)
    except ConversionError as exc:
        report.fail("import_config", f"refused {what}: {exc}")


# ------------------------------------------------------------------------------------------ laws
def config_roundtrip(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """``import_config(export_config(cfg)) == cfg``, through JSON as config.json would carry it."""
    report = Reporter("config_roundtrip", converter)
    hf = export_config(report, converter, cfg)
    try:
        text = json.dumps(hf)
    except (TypeError, ValueError) as exc:
        report.fail("export_config", f"the exported dict is not JSON: {exc}")
    back = _import(report, converter, json.loads(text), "its own export")
    if back != cfg:
        diffs = config_difference(cfg, back)
        report.fail(diffs[0].split(":")[0] if diffs else "config",
                    "import_config(export_config(cfg)) != cfg: " + "; ".join(diffs[:6]))


def hf_config_roundtrip(converter, hf: Mapping[str, Any], seed: int = 0) -> None:
    """``normalize(export_config(import_config(h))) == normalize(h)``, and the export uses the v5
    rope form (``rope_parameters`` with ``rope_type``; no top-level ``rope_theta``/``rope_scaling``).
    The v4 alias ``type`` appears in the export exactly where ``h`` spelled it (transformers 5 keeps
    it beside ``rope_type``, so dropping it changes the saved config), and equals ``rope_type``. A
    top-level ``rope_theta``/``rope_scaling`` that the config class ignores (``normalize(h)`` keeps it
    as it was, e.g. GPT-NeoX's) is data like any unknown key: it comes back unchanged."""
    report = Reporter("hf_config_roundtrip", converter)
    cfg = _import(report, converter, hf, "an HF config the strategy says it accepts")
    out = export_config(report, converter, cfg)
    expected = normalize(hf)
    for key in V4_ROPE_KEYS:
        # (an architecture whose config class ignores the key, such as GPT-NeoX's top-level
        # rope_theta, keeps it as an inert attribute: then it is data, carried as it was)
        inert = key in hf and key in expected and same_value(expected[key], jsonable(hf[key]))
        report.expect(key not in out or (inert and same_value(jsonable(out[key]), jsonable(hf[key]))), key,
                      f"export_config wrote the v4 key {key}={short(out.get(key))}; transformers 5 configs use "
                      "rope_parameters")
    rope = out.get("rope_parameters")
    if rope is not None:
        aliased = any(V4_ROPE_ALIAS in r for key in ("rope_scaling", "rope_parameters") for r in rope_dicts(hf.get(key)))
        report.expect(bool(rope_dicts(rope)) and all("rope_type" in r for r in rope_dicts(rope)), "rope_parameters",
                      f"not in the v5 form (a dict with rope_type, or one such dict per layer type): {short(rope)}")
        for r in rope_dicts(rope):
            if aliased:
                report.expect(r.get(V4_ROPE_ALIAS) == r.get("rope_type"), "rope_parameters.type",
                              f"the source spelled the v4 'type', the export must keep it equal to rope_type: {short(rope)}")
            else:
                report.expect(V4_ROPE_ALIAS not in r, "rope_parameters.type",
                              f"the export invented the v4 alias 'type': {short(rope)}")
    diffs = dict_difference(expected, normalize(out))
    if diffs:
        report.fail(diffs[0].split(":")[0], "normalize(export(import(h))) != normalize(h): " + "; ".join(diffs[:6]))


def hf_config_accepted(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """transformers' config class for the exported ``model_type`` builds the exported dict with no
    warning (python warnings and transformers' logger both captured), and keeps its meaning: the
    config.json ``save_pretrained`` writes, and the config ``from_pretrained`` reloads from it, both
    import back to the same architecture. (Keys the class normalises
    without changing the model, such as Qwen2's ``sliding_window`` while the window is off, may
    change; architecture keys may not.)"""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    report = Reporter("hf_config_accepted", converter)
    hf = export_config(report, converter, cfg)
    report.expect(hf.get("model_type") == converter.model_type, "model_type",
                  f"exported model_type={hf.get('model_type')!r}, converter is {converter.model_type!r}")
    report.expect(hf.get("model_type") in CONFIG_MAPPING, "model_type",
                  f"{hf.get('model_type')!r} is not a transformers model type")
    with captured_warnings() as messages:
        try:
            config = common.hf_config(hf)
        except Exception as exc:  # transformers' own validation refusing the dict is the finding
            report.fail("AutoConfig.for_model", f"{type(exc).__name__}: {exc}")
    report.expect(not messages, "AutoConfig.for_model", f"warned: {messages[:3]}")
    expected_cls = CONFIG_MAPPING[converter.model_type]
    report.expect(type(config) is expected_cls, "model_type",
                  f"built {type(config).__name__}, expected {expected_cls.__name__}")
    with tempfile.TemporaryDirectory() as tmp, common.quiet_transformers():
        config.save_pretrained(tmp)
        reloaded = AutoConfig.from_pretrained(tmp)
        with open(f"{tmp}/config.json") as fh:
            saved = json.load(fh)
    report.expect(type(reloaded) is expected_cls, "config.json",
                  f"from_pretrained built {type(reloaded).__name__}, expected {expected_cls.__name__}")
    _same_architecture(report, converter, cfg, saved, "the config.json save_pretrained wrote")
    _same_architecture(report, converter, cfg, jsonable(reloaded.to_dict()), "from_pretrained(saved).to_dict()")


def _same_architecture(report: Reporter, converter, cfg: native.ModelConfig, hf: Mapping[str, Any], what: str) -> None:
    back = _import(report, converter, hf, what)
    if without_metadata(back) != without_metadata(cfg):
        diffs = config_difference(without_metadata(cfg), without_metadata(back))
        report.fail(diffs[0].split(":")[0] if diffs else "config",
                    f"{what} imports to another architecture: " + "; ".join(diffs[:6]))


def architecture_coverage(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """Static: every architecture field of ``cfg`` is claimed by the declaration. Injectivity: for
    every architecture field, another valid value (see properties.mutations) changes the export or
    is refused with ``ConversionError``."""
    report = Reporter("architecture_coverage", converter)
    unclaimed = converter.unclaimed_fields(cfg)
    report.expect(not unclaimed, unclaimed[0] if unclaimed else "",
                  f"architecture field(s) claimed by no declaration: {unclaimed[:8]}")
    base = export_config(report, converter, cfg)
    rnd = common.rng(seed, "architecture_coverage")
    for path in native.architecture_fields(cfg):
        found = first_valid(cfg, path, rnd)
        if found is None:
            continue  # no other valid value of this field in this config
        mutation, changed = found
        try:
            out = converter.export_config(changed)
        except ConversionError:
            continue
        if same_value(jsonable(out), jsonable(base)):
            report.fail(path, f"changing {mutation.describe()} leaves export_config unchanged "
                              "(the field is dropped or conflated)")


def generic_path(path: str) -> str:
    """``decoder.blocks[3].attention.window`` → ``attention.window`` (what messages name)."""
    return re.sub(r"^decoder\.blocks\[\d+\]\.", "", path)


def unrepresentable_rejected(converter, cfg: native.ModelConfig, seed: int = 0, field: str | None = None) -> None:
    """A config the HF format cannot express is refused by ``export_config`` and ``export_weights``
    with a ``ConversionError`` naming the field: ``field`` when the strategy names it, else some
    architecture field of the config (by its path within its block). Nothing is silently dropped."""
    report = Reporter("unrepresentable_rejected", converter)
    names = [generic_path(field)] if field else sorted({generic_path(p) for p in native.architecture_fields(cfg)},
                                                       key=len, reverse=True)

    def check(message: str, where: str) -> None:
        candidates = names + [n.rsplit(".", 1)[0] for n in names if n.endswith(".kind")]
        if not any(n in message for n in candidates):
            wanted = names[0] if field else "an architecture field path"
            report.fail(where, f"ConversionError does not name {wanted}: {message!r}")

    try:
        out = converter.export_config(cfg)
    except ConversionError as exc:
        check(str(exc), "export_config")
    else:
        report.fail(field or "export_config", f"exported an unrepresentable config instead of refusing it: {short(out)}")
    state = {name: _zeros(shape) for name, shape in native.state_shapes(cfg).items()}
    try:
        produced = [name for name, _ in converter.export_weights(cfg, state)]
    except ConversionError as exc:
        check(str(exc), "export_weights")
    else:
        report.fail(field or "export_weights", f"exported weights of an unrepresentable config: {produced[:4]}...")


def _zeros(shape):
    import torch

    return torch.zeros(shape, device="meta")
