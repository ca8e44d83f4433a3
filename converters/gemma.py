"""Gemma (v1): Llama with Gemma's conventions, shared by Gemma2 and Gemma3.

- Norm weights are stored as ``w`` and applied as ``1 + w`` (HF computes ``x̂ * (1 + w)`` in float32):
  the native norms are zero-centred (``RMSNormConfig.zero_centered``) and the weights are renamed,
  never offset, so every dtype round-trips bit for bit.
- Embeddings are scaled by ``hidden_size ** 0.5`` (HF's own expression, cast to the weight dtype):
  native ``embeddings.multiplier`` must be exactly that float. ``math.sqrt`` differs from ``** 0.5`` by
  one ulp for some sizes (2921, 3541, …), so the comparison uses ``** 0.5``, as transformers does.
- Tied by default; ``head_dim`` is a config field with its own default (256), not ``hidden / heads``;
  ``num_key_value_heads`` defaults to the class default, not to ``num_attention_heads``.
- ``hidden_act`` drives the MLP in transformers 5. The legacy value ``"gelu"`` means the tanh
  approximation (GemmaConfig rewrites it to ``gelu_pytorch_tanh``), so exact GELU cannot be written.
  ``hidden_activation`` (read by transformers 4, ignored by 5) is carried when it agrees with the
  effective activation and refused when it contradicts it.
- ``use_bidirectional_attention`` (an encoder mode) is carried when null/false, refused when true.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config_primitives import ConfigPrimitive, ConstantImport, Custom, Mapped, Rename
from .errors import ConversionError
from .llama import CARRIED, LlamaConverter

#: native activation ↔ Gemma ``hidden_act`` (transformers 5). ``"gelu"`` is imported as the tanh
#: approximation (GemmaConfig's legacy rewrite); the first pair per native value wins on export.
GEMMA_ACTIVATIONS = (("gelu_tanh", "gelu_pytorch_tanh"), ("gelu_tanh", "gelu"), ("silu", "silu"), ("relu", "relu"))

#: HF keys of the Gemma family that do not change the forward pass
GEMMA_CARRIED = tuple(k for k in CARRIED if k != "pretraining_tp")


def embedding_scale() -> Custom:
    """``embeddings.multiplier`` is ``hidden_size ** 0.5``, always (Gemma's normaliser)."""

    def export(get):
        multiplier, hidden = get("embeddings.multiplier"), get("hidden_size")
        if multiplier != hidden ** 0.5:
            raise ConversionError(f"embeddings.multiplier={multiplier!r} cannot be expressed: Gemma scales "
                                  f"embeddings by hidden_size ** 0.5 = {hidden ** 0.5!r}")
        return {}

    def import_(hf):
        hidden = hf.get("hidden_size")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ConversionError(f"config.json: hidden_size={hidden!r} must be a positive integer")
        return {"embeddings.multiplier": hidden ** 0.5}

    return Custom(("embeddings.multiplier",), (), export, import_)


#: What a primitive carrying one HF key (its ``key`` field) in the native ``metadata`` claims.
CARRIES_KEY_IN_METADATA = (property(lambda self: (self.key,)), ("metadata",))


@dataclass(frozen=True)
class CarriedUnless(ConfigPrimitive):
    """An HF key that does not change the forward pass for the ``allowed`` values: carried in
    ``metadata`` then, refused (both ways) otherwise."""

    key: str
    allowed: tuple[Any, ...]
    reason: str

    hf_keys, native_paths = CARRIES_KEY_IN_METADATA

    def _check(self, value, where: str) -> None:
        if not any(value is a or (type(value) is type(a) and value == a) for a in self.allowed):
            raise ConversionError(f"{where}{self.key}={value!r} is not supported ({self.reason}; "
                                  f"supported: {list(self.allowed)})")

    def export(self, get):
        metadata = get("metadata")
        if self.key not in metadata:
            return {}
        self._check(metadata[self.key], "metadata.")
        return {self.key: metadata[self.key]}

    def import_(self, hf):
        if not hf.has(self.key):
            return {}
        value = hf.get(self.key)
        self._check(value, "config.json: ")
        return {f"metadata.{self.key}": value}


def bidirectional(default_ok=(None, False)) -> CarriedUnless:
    return CarriedUnless("use_bidirectional_attention", default_ok,
                         "bidirectional (encoder) attention cannot be expressed: the native model is causal")


@dataclass(frozen=True)
class InertAlias(ConfigPrimitive):
    """A second activation key the model does not read (Gemma's ``hidden_activation`` in
    transformers 5, Gemma2/3's ``hidden_act``): carried when null or naming the same activation as
    the live key, refused when it contradicts it."""

    key: str
    live_key: str
    table: tuple[tuple[str, str], ...]
    live_default: str  # the live key's class default, when it is absent

    hf_keys, native_paths = CARRIES_KEY_IN_METADATA

    def _native(self, value):
        return {hf: native for native, hf in reversed(self.table)}.get(value)

    def export(self, get):
        metadata = get("metadata")
        if self.key not in metadata:
            return {}
        value = metadata[self.key]
        if value is not None:
            live = {block.mlp.activation for block in get("decoder.blocks")}
            if self._native(value) is None or live != {self._native(value)}:
                raise ConversionError(f"metadata.{self.key}={value!r} contradicts mlp.activation={sorted(live)} "
                                      f"(it would be written beside {self.live_key})")
        return {self.key: value}

    def import_(self, hf):
        if not hf.has(self.key):
            return {}
        value = hf.get(self.key)
        if value is not None:
            live = hf.get(self.live_key, self.live_default)
            if self._native(value) is None or self._native(value) != self._native(live):
                raise ConversionError(f"config.json: {self.key}={value!r} contradicts {self.live_key}={live!r} "
                                      f"(transformers 5 reads only {self.live_key}; refused rather than ignored)")
        return {f"metadata.{self.key}": value}


class GemmaConverter(LlamaConverter):
    model_type = "gemma"
    architecture = "GemmaForCausalLM"
    carried = GEMMA_CARRIED
    max_position_default = 8192
    norm_eps_default = 1e-6
    norm_zero_centered = True
    head_dim_default = 256
    kv_heads_default = 16
    activation_key = "hidden_act"
    activation_alias = "hidden_activation"
    activations = GEMMA_ACTIVATIONS
    activation_default = "gelu_pytorch_tanh"

    def model_section(self):
        return {
            **super().model_section(),
            "multiplier": embedding_scale(),
            "tied": Rename("head.tied", "tie_word_embeddings", default=True),
            "bidirectional": bidirectional(),
            "activation_alias": InertAlias(self.activation_alias, self.activation_key, self.activations,
                                           self.activation_default),
        }

    def layer_section(self):
        return {
            **super().layer_section(),
            "kv_heads": Rename("attention.kv_heads", "num_key_value_heads", default=self.kv_heads_default),
            "head_dim": Rename("attention.head_dim", "head_dim", default=self.head_dim_default),
        }

    def mlp_section(self):
        return {
            **super().mlp_section(),
            "activation": Mapped("activation", self.activation_key, self.activations, default=self.activation_default),
            "bias": ConstantImport("bias", False, f"{self.architecture} MLPs have no bias"),
        }

    def weight_rules(self, cfg):
        from .gemma_weights import gemma_rules

        return gemma_rules(cfg)


__all__ = ["GemmaConverter", "GEMMA_ACTIVATIONS", "GEMMA_CARRIED", "embedding_scale", "CarriedUnless", "InertAlias",
           "bidirectional"]
