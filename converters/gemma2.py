"""Gemma2: Gemma plus sandwich norms, ``query_pre_attn_scalar``, attention and final logit softcaps,
and per-layer sliding/global attention by ``layer_types``.

- ``query_pre_attn_scalar`` (an int, strictly typed by transformers) sets the softmax scale to
  ``query_pre_attn_scalar ** -0.5``. Native ``softmax_scale=None`` (``head_dim ** -0.5``) is written as
  ``query_pre_attn_scalar = head_dim``, and that value imports as None, so one model has one form:
  an explicit ``softmax_scale`` equal to ``head_dim ** -0.5``, or one that is not ``n ** -0.5`` for an
  integer ``n``, is refused.
- ``attn_logit_softcapping`` / ``final_logit_softcapping`` (float or null; the class defaults are 50.0
  and 30.0, so a native None is written as an explicit null).
- ``layer_types`` (default alternating, sliding first) picks per layer between ``sliding_window`` and
  full attention. With no sliding layer the window size is inert and carried in metadata.
- ``hidden_activation`` drives the MLP; ``hidden_act`` is read by no version of the model and is
  carried, as is ``cache_implementation``.
- transformers refuses ``hidden_size`` not divisible by ``num_attention_heads`` (even with an explicit
  ``head_dim``); so does this converter.
"""
from __future__ import annotations

from typing import Any, Callable

from .activations import ACTIVATIONS
from .config_primitives import Carried, ConstantImport, Custom, HFView, Rename
from .declaration import LayerwisePrimitive
from .errors import ConversionError
from .gemma import GEMMA_CARRIED, GemmaConverter
from .sliding import FULL, SLIDING

LAYER_TYPES = (SLIDING, FULL)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _float_or_none(value):
    return None if value is None else float(value)


def alternating_layer_types(hf: HFView, num_layers: int) -> list[str]:
    """Gemma2's default: sliding on even layers, full on odd ones."""
    return [SLIDING if (i + 1) % 2 else FULL for i in range(num_layers)]


def query_pre_attn_scalar(default: int = 256, head_dim_default: int = 256) -> Custom:
    """``attention.softmax_scale`` ↔ ``query_pre_attn_scalar`` (scale = scalar ** -0.5)."""

    def export(get):
        scale, head_dim = get("attention.softmax_scale"), get("attention.head_dim")
        if scale is None:
            return {"query_pre_attn_scalar": head_dim}
        scalar = round(scale ** -2) if scale > 0 else 0
        if scalar < 1 or scalar ** -0.5 != scale:
            raise ConversionError(f"attention.softmax_scale={scale!r} cannot be expressed: the format writes "
                                  "query_pre_attn_scalar, an integer n giving scale n ** -0.5")
        if scalar == head_dim:
            raise ConversionError(f"attention.softmax_scale={scale!r} is head_dim ** -0.5, which this format "
                                  "writes as query_pre_attn_scalar=head_dim and reads back as softmax_scale=None; "
                                  "use None")
        return {"query_pre_attn_scalar": scalar}

    def import_(hf):
        scalar = hf.get("query_pre_attn_scalar", default)
        if not _positive_int(scalar):
            raise ConversionError(f"config.json: query_pre_attn_scalar={scalar!r} must be a positive integer")
        return {"attention.softmax_scale": None if scalar == hf.get("head_dim", head_dim_default) else scalar ** -0.5}

    return Custom(("attention.softmax_scale",), ("query_pre_attn_scalar",), export, import_)


def softcap(native: str, hf: str, default) -> Rename:
    return Rename(native, hf, default=default, to_hf=_float_or_none, to_native=float)


class GemmaLayerTypes(LayerwisePrimitive):
    """``layer_types`` + ``sliding_window``: a layer is ``sliding_attention`` (window
    ``sliding_window``) or ``full_attention`` (no window). Explicit ``layer_types`` are always
    written; when absent on import they are derived as the HF class does (``default_layer_types``).
    ``sliding_window`` must be a positive integer when a layer slides (transformers cannot build the
    mask otherwise); with no sliding layer it is inert and carried in metadata (unless it is the class
    default, which export writes when metadata has none)."""

    native_paths: tuple[str, ...] = ("attention.window",)
    hf_keys: tuple[str, ...] = ("sliding_window", "layer_types")

    def __init__(self, default_layer_types: Callable[[HFView, int], list[str]] = alternating_layer_types,
                 window_default: int = 4096):
        self.default_layer_types = default_layer_types
        self.window_default = window_default

    def layer_types(self, hf: HFView, num_layers: int) -> list[str]:
        layer_types = hf.get("layer_types", None)
        if layer_types is None:
            return self.default_layer_types(hf, num_layers)
        if not isinstance(layer_types, (list, tuple)) or len(layer_types) != num_layers \
                or any(t not in LAYER_TYPES for t in layer_types):
            raise ConversionError(f"config.json: layer_types={layer_types!r} must list {num_layers} entries "
                                  f"of {FULL!r}/{SLIDING!r}")
        return list(layer_types)

    def import_(self, hf, num_layers):
        layer_types = self.layer_types(hf, num_layers)
        window = hf.get("sliding_window", self.window_default)
        metadata = {}
        if SLIDING in layer_types:
            if not _positive_int(window):
                raise ConversionError(f"config.json: sliding_window={window!r} must be a positive integer "
                                      "when layer_types has sliding_attention layers")
        elif window != self.window_default:
            metadata["metadata.sliding_window"] = window  # inert without sliding layers
        per_layer = [{"attention.window": window if t == SLIDING else None} for t in layer_types]
        return per_layer, metadata

    def export(self, layers, get_model):
        windows = [block.attention.window for block in layers]
        sizes = sorted({w for w in windows if w is not None})
        if len(sizes) > 1:
            raise ConversionError(f"attention.window differs between sliding layers ({sizes}); "
                                  "this format has one sliding_window")
        window = sizes[0] if sizes else get_model("metadata").get("sliding_window", self.window_default)
        return {"sliding_window": window, "layer_types": [FULL if w is None else SLIDING for w in windows]}


class Gemma2Converter(GemmaConverter):
    model_type = "gemma2"
    architecture = "Gemma2ForCausalLM"
    carried = GEMMA_CARRIED + ("cache_implementation",)
    kv_heads_default = 4
    activation_key = "hidden_activation"
    activation_alias = "hidden_act"
    activations = ACTIVATIONS
    final_softcap_default: float | None = 30.0
    attn_softcap_default: float | None = 50.0

    def model_section(self):
        return {
            **super().model_section(),
            "final_softcap": softcap("head.final_softcap", "final_logit_softcapping", self.final_softcap_default),
            # hidden_act is read by no Gemma2/3 model (transformers 4 or 5): carried as is
            "activation_alias": Carried((self.activation_alias,)),
        }

    def layer_section(self):
        return {
            **super().layer_section(),
            "placement": ConstantImport("placement", "sandwich", "Gemma2/3 layers normalise before and after "
                                        "attention and MLP"),
            "softmax_scale": query_pre_attn_scalar(head_dim_default=self.head_dim_default),
            "logit_softcap": softcap("attention.logit_softcap", "attn_logit_softcapping", self.attn_softcap_default),
            "window": self.layer_types_section(),
        }

    def layer_types_section(self) -> LayerwisePrimitive:
        return GemmaLayerTypes()

    def export_config(self, cfg):
        hf = super().export_config(cfg)
        self._check_heads(hf, "")
        return hf

    def canonical_hf(self, hf):
        canonical = super().canonical_hf(hf)
        self._check_heads(canonical, "config.json: ")
        return canonical

    def _check_heads(self, hf, where: str) -> None:
        hidden, heads = hf.get("hidden_size"), hf.get("num_attention_heads")
        if _positive_int(hidden) and _positive_int(heads) and hidden % heads:
            raise ConversionError(f"{where}hidden_size={hidden} is not a multiple of num_attention_heads "
                                  f"(attention.heads)={heads}: {self.architecture}'s config refuses it, even with "
                                  "an explicit head_dim")
