"""The values of an untrusted ``config.json``, checked where it is read, before any converter sees it.

The converters' declarations say what each key means; this module says what no value may be,
whatever the architecture, so that one check covers every converter:

- **Types.** A size or count is an integer (``true`` is not 1, ``32.0`` is not 32); a scale,
  epsilon or theta is a number (not a boolean). Python's ``isinstance(True, int)`` lets a boolean
  through every naive check, and transformers then builds a model with one layer.
- **Finite.** No NaN or infinity anywhere (JSON has neither; Python's parser accepts both, and a
  number too large for a float parses as infinity).
- **Bounded before allocation.** Widths, vocabulary, layers and experts are bounded so that every
  tensor's element count fits comfortably in 64 bits and planning (a few operations per layer and
  expert) ends in bounded time and memory: a config declaring a million layers is refused at once
  rather than planned.

The bounds are far above any public model (largest seen: vocabulary 262k, width 16k, 126 layers,
384 experts) and far below what overflows.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from native.schema import MAX_LAYERS, nonfinite_path

from .errors import ConversionError

MAX_WIDTH = 2**20  # hidden, intermediate, head_dim, heads
MAX_VOCAB = 2**24
MAX_POSITIONS = 2**40
MAX_EXPERTS = 2**16
MAX_LAYER_EXPERTS = 2**20  # layers x experts: the number of expert weight sets planned

#: integer keys and their upper bound (a key absent or null is not checked here)
INTEGER_KEYS: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
                     "head_dim", "num_attention_heads", "num_key_value_heads", "query_pre_attn_scalar"), MAX_WIDTH),
    "vocab_size": MAX_VOCAB,
    "num_hidden_layers": MAX_LAYERS,
    **dict.fromkeys(("max_position_embeddings", "original_max_position_embeddings", "sliding_window",
                     "max_window_layers"), MAX_POSITIONS),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok",
                     "n_shared_experts", "decoder_sparse_step", "first_k_dense_replace"), MAX_EXPERTS),
}
#: keys holding a real number (an integer is accepted where a float belongs)
NUMBER_KEYS = frozenset({
    "rope_theta", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "initializer_range",
    "partial_rotary_factor", "rotary_pct", "attn_logit_softcapping", "final_logit_softcapping", "factor",
    "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "attention_factor", "mscale",
    "mscale_all_dim", "router_aux_loss_coef", "attention_dropout", "hidden_dropout", "embedding_multiplier",
    "logits_scaling", "residual_multiplier", "attention_multiplier",
})
#: integer keys that must also be positive (a model without heads or layers is no model)
POSITIVE_KEYS = frozenset({"hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                           "intermediate_size", "vocab_size", "head_dim"})
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
_NESTED = ("rope_scaling", "rope_parameters")


def check_config_values(config: Mapping[str, Any], file: str = "config.json") -> None:
    """Refuse (:class:`ConversionError` naming ``file`` and the key) a value no architecture
    accepts: see the module docstring."""
    check_finite(config, file)
    for where, section in _sections(config):
        for key, value in section.items():
            if value is None:
                continue
            name = f"{where}{key}"
            if key in INTEGER_KEYS:
                positive = key in POSITIVE_KEYS and not where
                if type(value) is not int or value < (1 if positive else 0):
                    raise ConversionError(f"{file}: {name}={value!r} must be a "
                                          f"{'positive' if positive else 'non-negative'} integer")
                if value > INTEGER_KEYS[key]:
                    raise ConversionError(f"{file}: {name}={value} is more than the {INTEGER_KEYS[key]} accepted")
            elif key in NUMBER_KEYS and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConversionError(f"{file}: {name}={value!r} must be a number")
    layers = config.get("num_hidden_layers")
    experts = max((config.get(k) or 0 for k in _EXPERT_KEYS), default=0)
    if isinstance(layers, int) and isinstance(experts, int) and layers * max(1, experts) > MAX_LAYER_EXPERTS:
        raise ConversionError(f"{file}: num_hidden_layers={layers} with {experts} experts each is more than the "
                              f"{MAX_LAYER_EXPERTS} expert weight sets accepted")


def _sections(config: Mapping[str, Any]):
    """The top level, and the rope dictionaries (v4 ``rope_scaling``, v5 ``rope_parameters``, which
    may also be keyed by layer type)."""
    yield "", config
    for key in _NESTED:
        nested = config.get(key)
        if isinstance(nested, Mapping):
            yield f"{key}.", nested
            for sub, value in nested.items():
                if isinstance(value, Mapping):
                    yield f"{key}.{sub}.", value


def check_finite(value: Any, file: str) -> None:
    """No NaN or infinity anywhere in ``value`` (e.g. ``generation_config.json``)."""
    path = nonfinite_path(value)
    if path is not None:
        raise ConversionError(f"{file}: {path}={_lookup(value, path)!r} is not a finite number")


def _lookup(value: Any, path: str) -> Any:
    for part in path.replace("[", ".[").split("."):
        if part.startswith("["):
            value = value[int(part[1:-1])]
        elif part:
            value = value[part]
    return value


# ------------------------------------------------------------- typed reads of one key, class default
def read_int(hf, key: str, default: Any, minimum: int, allow_none: bool = False) -> Any:
    """An integer HF key (absent: the class default), refused below ``minimum``."""
    value = hf.get(key, default)
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConversionError(f"config.json: {key}={value!r} must be an integer >= {minimum}")
    return value


def read_bool(hf, key: str, default: bool) -> bool:
    value = hf.get(key, default)
    if not isinstance(value, bool):
        raise ConversionError(f"config.json: {key}={value!r} must be a boolean")
    return value


def read_float(hf, key: str, default: Any) -> float:
    value = hf.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConversionError(f"config.json: {key}={value!r} must be a positive number")
    return float(value)
