"""Pieces of the HF config dicts the strategies draw, written from the transformers config classes
and independently of the converters (a converter bug cannot shape its own test inputs):

- :data:`PLAIN`: the native features the HF decoders share, so each architecture's constraints
  state only their differences;
- :func:`hf_sizes`: the keys every dense-attention config opens with (sizes, heads, ``head_dim``
  as the class spells it); each ``hf_configs`` then adds only its own keys;
- rope: a native rotary drawn as transformers can build it (:func:`rotary_for`), spelled as v5
  ``rope_parameters`` (:func:`rope_parameters_of`), or in the v4 forms (:func:`rope_keys`);
- carried keys (token ids inside the vocabulary, training and file keys), each present or absent;
- real configs and scaled-down copies for ``@example``; the forms real files carry
  (:func:`real_file_forms`).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
from typing import Any, Sequence

from hypothesis import strategies as st

import native

from . import _mutations as mu
from . import building_blocks as bb
from .paths import REAL_CONFIGS

#: rotary kinds every HF class here accepts (they all use ROPE_INIT_FUNCTIONS; no "none")
ROPE_KINDS = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
#: native activation -> ``hidden_act``
ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")

#: The native features the HF decoders here have in common: pre-norm RMSNorm blocks with one
#: epsilon (the final norm too), no q/k norm, full rotation of any rope kind transformers builds, a
#: gated bias-free MLP, no bias, window, softmax scale, softcap or embedding multiplier, tied or
#: not. Each architecture's ``native_configs`` states only its differences (``{**PLAIN, ...}``).
PLAIN = dict(
    hidden="free", placements=("pre",), norm_kinds=("rms",), shared_eps=True, final_norm="same", qk_norms=("none",),
    rotary_kinds=ROPE_KINDS, rotary_fractions=("full",), hf_valid_rotary=True, attention_biases=bb.BIAS_NONE,
    mlp_biases=(False,), feed_forwards=("mlp",), gated=(True,), windows=("none",), layer_patterns=("uniform",),
    varying=(), tied=(False, True), embedding_multipliers=("none",), softmax_scales=("none",),
    attention_softcaps=("none",), final_softcaps=("none",))


# ---------------------------------------------------------------------------------------- sizes
#: How an HF class spells ``head_dim`` (see :func:`hf_sizes`).
HEAD_DIM_SPELLINGS = ("always", "when_needed", "any", "any_or_null")


@st.composite
def hf_sizes(draw, model_type: str, *, hidden: Sequence[str] = ("free",), hidden_at_least_heads: bool = False,
             layouts: st.SearchStrategy[bb.HeadLayout] | None = None, layers: st.SearchStrategy[int] | None = None,
             intermediate: st.SearchStrategy[int] | None = None, kv_heads: str = "always",
             kv_default: int | None = None, head_dim: str = "when_needed") -> tuple[dict[str, Any], bb.HeadLayout]:
    """``(hf, layout)``: the keys every dense-attention HF config opens with (``model_type``, vocab,
    hidden, intermediate, layer, head and position sizes), drawn from one head layout, and that
    layout with the ``head_dim`` the dict means. Each architecture then adds only its own keys.

    - ``hidden``: the ``bb.hidden_for`` policies to draw from (simplest first);
      ``"heads_times_head_dim"`` caps the layout's width. ``hidden_at_least_heads``: a free hidden
      size is at least the head count (the MoE and Llama-family classes as drawn so far);
    - ``layouts``: the head layouts, where the class restricts them (GPT-NeoX: no GQA);
    - ``kv_heads``: ``"always"`` written, ``"never"`` (the class has one head count) or
      ``"optional"``: left out only where ``kv_default`` (None: the head count), the class
      default, is the drawn value;
    - ``head_dim``: ``"always"`` written; ``"when_needed"``, only where ``hidden // heads`` is not
      it (the converters refuse transformers' floored default); ``"any"``/``"any_or_null"``, any
      spelling the class reads (:func:`head_dim_keys`).
    """
    if head_dim not in HEAD_DIM_SPELLINGS:
        raise ValueError(f"hf_sizes(head_dim={head_dim!r}): choose from {HEAD_DIM_SPELLINGS}")
    policy = draw(bb.choice(tuple(hidden)))
    if layouts is None:
        layouts = bb.head_layouts(max_q_width=bb.MAX_HIDDEN if policy == "heads_times_head_dim" else None)
    layout = draw(layouts)
    low = max(bb.MIN_HIDDEN, layout.heads) if hidden_at_least_heads else bb.MIN_HIDDEN
    hidden_size = draw(bb.hidden_for(layout, policy, min_value=low))
    hf: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": draw(bb.vocab_sizes()),
        "hidden_size": hidden_size,
        "intermediate_size": draw(bb.intermediate_sizes() if intermediate is None else intermediate),
        "num_hidden_layers": draw(bb.layer_counts() if layers is None else layers),
        "num_attention_heads": layout.heads,
        "num_key_value_heads": layout.kv_heads,
        "max_position_embeddings": draw(bb.max_positions()),
    }
    default_kv = layout.heads if kv_default is None else kv_default
    if kv_heads == "never" or (kv_heads == "optional" and layout.kv_heads == default_kv and draw(st.booleans())):
        del hf["num_key_value_heads"]
    if head_dim == "always" or (head_dim == "when_needed" and hidden_size != layout.heads * layout.head_dim):
        hf["head_dim"] = layout.head_dim
    elif head_dim in ("any", "any_or_null"):
        hf.update(draw(head_dim_keys(hidden_size, layout, null_allowed=head_dim == "any_or_null")))
    return hf, dataclasses.replace(layout, head_dim=head_dim_of(hf))


@st.composite
def head_dim_keys(draw, hidden_size: int, layout: bb.HeadLayout, *, null_allowed: bool) -> dict[str, Any]:
    """How ``head_dim`` is spelled: left out (first, so examples shrink to fewer keys), drawn
    freely, the default spelled explicitly, or ``null`` (where the class reads ``null`` as the
    default). Left out or ``null`` only when the heads divide ``hidden_size`` into an even default
    (the converters refuse transformers' floored default)."""
    default = hidden_size // layout.heads
    choice = draw(st.sampled_from(("absent", "drawn", "default_explicit") + (("null",) if null_allowed else ())))
    if choice == "drawn" or default < 2 or default % 2 or hidden_size % layout.heads:
        return {"head_dim": layout.head_dim}
    if choice == "default_explicit":
        return {"head_dim": default}
    return {} if choice == "absent" else {"head_dim": None}


def head_dim_of(hf: dict[str, Any]) -> int:
    return hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]


# ----------------------------------------------------------------------------------------- rope
def hf_buildable_rotary(rotary, head_dim: int, max_position: int):
    """Two corners of ``bb.rotaries(hf_valid=True)`` that transformers cannot take, mapped (not
    filtered) to the nearest rotary it can: dynamic NTK over 2 dims (its base exponent divides by
    ``dim - 2``) becomes linear; llama3 with ``original_max_position_embeddings >= max_position``
    (a validation warning) gets ``max_position - 1``."""
    if isinstance(rotary, native.DynamicRotary) and rotary.rotary_dim(head_dim) <= 2:
        return native.LinearRotary(theta=rotary.theta, fraction=rotary.fraction, factor=rotary.factor)
    if isinstance(rotary, native.Llama3Rotary) and rotary.original_max_position_embeddings >= max_position:
        return dataclasses.replace(rotary, original_max_position_embeddings=max_position - 1)
    return rotary


def hf_buildable(cfg: native.ModelConfig) -> native.ModelConfig:
    """:func:`hf_buildable_rotary` on every layer of a native config."""
    def buildable(block):
        a = block.attention
        rotary = hf_buildable_rotary(a.rotary, a.head_dim, cfg.max_position_embeddings)
        if rotary == a.rotary:
            return block
        return dataclasses.replace(block, attention=dataclasses.replace(a, rotary=rotary))
    return mu.every_block(cfg, buildable)


@st.composite
def rotary_for(draw, head_dim: int, max_position: int, kinds: Sequence[str] = ROPE_KINDS,
               fractions: Sequence[str] = ("full",)):
    """A native rotary of one of ``kinds`` that transformers builds without a warning."""
    rotary = draw(bb.rotaries(head_dim, max_position, kinds=kinds, fractions=fractions, hf_valid=True))
    return hf_buildable_rotary(rotary, head_dim, max_position)


def rope_parameters_of(rotary, partial: bool = False) -> dict[str, Any]:
    """A native rotary as the v5 ``rope_parameters`` dict transformers reads (the test side's own
    spelling, independent of the converters); with ``partial_rotary_factor`` when ``partial``."""
    out: dict[str, Any] = {"rope_type": rotary.kind, "rope_theta": rotary.theta}
    if partial:
        out["partial_rotary_factor"] = rotary.fraction
    for name in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                 "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate"):
        value = getattr(rotary, name, None)
        if value is not None:
            out[name] = value
    if isinstance(rotary, native.LongRopeRotary):
        out["short_factor"], out["long_factor"] = list(rotary.short_factor), list(rotary.long_factor)
    return out


@st.composite
def rope_parameters(draw, head_dim: int, max_position: int, kinds: Sequence[str] = ROPE_KINDS,
                    fractions: Sequence[str] = ("full",)) -> dict:
    """A v5 ``rope_parameters`` dict of one of ``kinds``, valid for transformers; with a
    ``partial_rotary_factor`` entry when ``fractions`` allow partial rotation."""
    rotary = draw(rotary_for(head_dim, max_position, kinds, fractions))
    return rope_parameters_of(rotary, partial="partial" in fractions)


#: How a v4 config may spell default rope: no ``rope_scaling``, ``null``, or ``{"rope_type": "default"}``.
DEFAULT_SCALINGS = ("absent", "null", "dict")


@st.composite
def rope_keys(draw, params: dict[str, Any], default_scaling: Sequence[str] = DEFAULT_SCALINGS) -> dict[str, Any]:
    """``{"rope_parameters": params}`` (v5) or the same rope in the v4 keys (:func:`v4_rope_keys`)."""
    if draw(st.booleans()):
        return draw(v4_rope_keys(params, default_scaling))
    return {"rope_parameters": dict(params)}


@st.composite
def v4_rope_keys(draw, params: dict[str, Any], default_scaling: Sequence[str] = DEFAULT_SCALINGS) -> dict[str, Any]:
    """A v5 ``rope_parameters`` dict in the v4 spelling: ``rope_theta`` at top level, the rest in a
    ``rope_scaling`` keyed by ``type`` or ``rope_type``; plain RoPE (no parameters) as one of
    ``default_scaling`` (the spellings the class's real files use)."""
    rest = dict(params)
    theta, kind = rest.pop("rope_theta"), rest.pop("rope_type")
    if kind == "default" and not rest:
        form = draw(bb.choice(tuple(default_scaling)))
        if form != "dict":
            return {"rope_theta": theta} if form == "absent" else {"rope_theta": theta, "rope_scaling": None}
    return {"rope_theta": theta, "rope_scaling": {draw(st.sampled_from(("rope_type", "type"))): kind, **rest}}


# -------------------------------------------------------------------------------- carried keys
@st.composite
def optional_keys(draw, values: dict[str, st.SearchStrategy]) -> dict[str, Any]:
    """Each key present (with a drawn value) or absent; absent first, so examples shrink to fewer keys."""
    out = {}
    for key, strategy in values.items():
        if draw(st.booleans()):
            out[key] = draw(strategy)
    return out


@st.composite
def token_ids(draw, vocab_size: int, keys: Sequence[str] = TOKEN_KEYS, allow_none: bool = True) -> dict[str, Any]:
    """``{key: id}`` with every id inside the vocabulary (or None): the HF defaults of several
    architectures (Phi-3's 32000, StarCoder2's 50256, OLMo2's 50279) exceed a tiny vocab, which
    transformers warns about and Phi-3 cannot even build (``padding_idx``)."""
    ids = st.integers(0, vocab_size - 1)
    return {key: draw(st.one_of(ids, st.none()) if allow_none else ids) for key in keys}


@st.composite
def with_token_ids(draw, configs: st.SearchStrategy[native.ModelConfig], keys: Sequence[str] = TOKEN_KEYS):
    """Native configs whose metadata carries token ids inside their vocabulary."""
    cfg = draw(configs)
    return dataclasses.replace(cfg, metadata={**cfg.metadata, **draw(token_ids(cfg.vocab_size, keys))})


#: MoE training keys :func:`token_and_training_keys` may add.
TRAINING_KEYS = {
    "output_router_logits": st.booleans(),
    "router_aux_loss_coef": st.sampled_from([0.001, 0.02]),
    "router_jitter_noise": st.sampled_from([0.0, 0.01]),
}


@st.composite
def token_and_training_keys(draw, vocab_size: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Carried HF keys, each present or absent: token ids inside the vocab (``null`` or a list for
    ``eos``), ``initializer_range``, ``use_cache``, dropout, and the ``extra`` of :data:`TRAINING_KEYS`."""
    token = st.one_of(st.none(), st.integers(0, vocab_size - 1))
    return draw(optional_keys({
        "bos_token_id": token,
        "eos_token_id": st.one_of(token, st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=2)),
        "pad_token_id": token,
        "initializer_range": st.sampled_from([0.02, 0.006]),
        "use_cache": st.booleans(),
        "attention_dropout": st.sampled_from([0.0, 0.1]),
        **{key: TRAINING_KEYS[key] for key in extra},
    }))


def dropouts() -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), st.sampled_from([0.1, 0.05]))


#: The ``torch_dtype``/``transformers_version`` values :func:`file_keys` draws for the Llama-family,
#: MoE and DeepSeek classes (the other dense classes take the defaults).
LATER_FILES = dict(dtypes=("bfloat16", "float32"), versions=("4.36.0.dev0", "4.51.0", "5.0.0"))


@st.composite
def file_keys(draw, architecture: str, dtypes: Sequence[str] = ("bfloat16", "float32", "float16"),
              versions: Sequence[str] = ("4.40.2", "4.46.0", "5.0.0")) -> dict[str, Any]:
    """Keys that describe the file, not the model (architectures, dtype, version), each present or absent."""
    return draw(optional_keys({
        "architectures": st.just([architecture]),
        "torch_dtype": st.sampled_from(list(dtypes)),
        "transformers_version": st.sampled_from(list(versions)),
    }))


# ------------------------------------------------------------------------------------ examples
def real_config(name: str) -> dict[str, Any]:
    """``strategies/real_configs/<name>`` as published (the files ship inside the package)."""
    return json.loads((REAL_CONFIGS / name).read_text())


def default_config(model_type: str) -> dict[str, Any]:
    """transformers' default config of ``model_type`` as a dict (file keys dropped)."""
    from transformers import AutoConfig

    return {k: v for k, v in AutoConfig.for_model(model_type).to_dict().items()
            if k not in ("transformers_version", "_name_or_path")}


def scaled_down(real: dict[str, Any], **sizes: Any) -> dict[str, Any]:
    """A real config at test size: the given keys replaced, every other key (names, spellings) kept,
    token ids past the new vocabulary folded into it."""
    out = copy.deepcopy(real)
    out.update(sizes)
    vocab = out.get("vocab_size")
    for key in TOKEN_KEYS:
        value = out.get(key)
        if vocab is not None and isinstance(value, int) and value >= vocab:
            out[key] = value % vocab
        elif vocab is not None and isinstance(value, list):
            out[key] = [v % vocab if isinstance(v, int) and v >= vocab else v for v in value]
    return out


# ------------------------------------------------------------------------- real-file forms
#: Keys real config.json files carry that transformers' config classes do not define (legacy
#: spellings, other libraries' switches): a converter must carry them verbatim.
LEGACY_KEYS = {
    "is_llama_config": st.just(True), "mlp_type": st.just("default"),
    "activation_function": st.sampled_from(["gelu", "gelu_pytorch_tanh"]), "rope_interleaved": st.just(False),
    "use_mrope": st.just(False), "use_bfloat16": st.booleans(), "tf_legacy_loss": st.just(False),
    "norm_type": st.just("layer_norm"),
}


@functools.lru_cache(maxsize=None)
def _accepts_int(model_type: str, key: str) -> bool:
    """Whether transformers' config class takes an int for ``key`` (some are strict dataclasses
    typed ``float``: DeepseekV2Config refuses ``attention_dropout: 0``, so no real file has it)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        CONFIG_MAPPING[model_type](**{key: 0})
    except Exception:  # noqa: BLE001  (huggingface_hub's validation error derives from Exception only)
        return False
    return True


def _defined_by(model_type: str) -> frozenset[str]:
    """Parameters and ``attribute_map`` names of the transformers config class (and of
    ``PretrainedConfig``): keys that are not legacy for this architecture."""
    import inspect

    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    keys = set()
    for cls in (CONFIG_MAPPING[model_type], PretrainedConfig):
        keys |= set(inspect.signature(cls.__init__).parameters) | set(getattr(cls, "attribute_map", {}) or {})
    return frozenset(keys)


@st.composite
def real_file_forms(draw, hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    """``hf`` as real config.json files spell it (each form optional, absent first so examples
    shrink to the plain dict): unknown legacy keys, ``auto_map``, ``quantization_config`` (which the
    pipeline, not the converter, interprets), nested dicts of unknown keys,
    ``null`` for an optional token id, ints where floats are meant (``rope_theta: 10000``), both
    ``torch_dtype`` and ``dtype``, the v4 rope ``type`` beside ``rope_type``, token ids as lists."""
    out = copy.deepcopy(hf)
    defined = _defined_by(model_type)
    legacy = {k: v for k, v in LEGACY_KEYS.items() if k not in defined and k not in out}
    out.update(draw(optional_keys(legacy)))
    out.update(draw(optional_keys({
        "auto_map": st.just({"AutoConfig": f"configuration_{model_type}.Config",
                             "AutoModelForCausalLM": f"modeling_{model_type}.ForCausalLM"}),
        "custom_settings": st.fixed_dictionaries({"nested": st.fixed_dictionaries({"depth": st.integers(0, 3)}),
                                                  "note": st.none() | st.just("x")}),
        "quantization_config": st.sampled_from([
            {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
            {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}]),
    })))
    if "pad_token_id" not in out and draw(st.booleans()):
        out["pad_token_id"] = None
    if draw(st.booleans()):
        _integral_floats_as_ints(out, model_type)
    if "torch_dtype" in out and draw(st.booleans()):
        out["dtype"] = out["torch_dtype"]
    rope = out.get("rope_scaling") if isinstance(out.get("rope_scaling"), dict) else out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_type" in rope and "type" not in rope and draw(st.booleans()):
        rope["type"] = rope["rope_type"]
    if isinstance(out.get("eos_token_id"), int) and draw(st.booleans()):
        others = [v for v in (out.get("bos_token_id"), out.get("pad_token_id")) if isinstance(v, int)]
        out["eos_token_id"] = [out["eos_token_id"], *others[:1]]
    return out


def _integral_floats_as_ints(hf: dict[str, Any], model_type: str) -> None:
    rope = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    spots = [(hf, "rope_theta"), (rope, "rope_theta")]
    if _accepts_int(model_type, "attention_dropout"):
        spots.append((hf, "attention_dropout"))
    for holder, key in spots:
        value = holder.get(key)
        if isinstance(value, float) and value.is_integer():
            holder[key] = int(value)


def with_real_file_forms(factory, model_type: str):
    """Wrap a module's ``hf_configs`` so that it also draws :func:`real_file_forms`."""
    def hf_configs() -> st.SearchStrategy[dict]:
        return factory().flatmap(lambda hf: real_file_forms(hf, model_type))

    hf_configs.__doc__ = (factory.__doc__ or "") + "\n\nAlso in real-file forms (strategies._hf_common.real_file_forms)."
    return hf_configs


def real_configs(model_type: str) -> list[dict[str, Any]]:
    """Every file of ``strategies/real_configs`` whose ``model_type`` is ``model_type``, as published."""
    out = []
    for path in sorted(REAL_CONFIGS.glob("*.json")):
        hf = json.loads(path.read_text())
        if hf.get("model_type") == model_type:
            out.append(hf)
    return out


def with_real_configs(factory, model_type: str):
    """Wrap a module's ``hf_examples`` so that it also returns every real config of its architecture
    (after the module's own examples, each once), except those transformers itself warns about:
    ``hf_config_accepted`` demands a warning-free build, which no faithful export of such a file can
    give (the CLI round trip over real configs still covers them)."""
    def hf_examples() -> list[dict[str, Any]]:
        examples = list(factory())
        return examples + [hf for hf in real_configs(model_type) if hf not in examples and not transformers_warns(hf)]

    hf_examples.__doc__ = (factory.__doc__ or "") + "\n\nThen every real config of this architecture."
    return hf_examples


def example_ids(examples: list[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """Test ids for ``hf_examples()``: ``names`` for a module's own examples, then one per real config
    appended by :func:`with_real_configs` (its ``_name_or_path``, or its position)."""
    return [names[i] if i < len(names) else str(hf.get("_name_or_path") or f"real-{i}")
            for i, hf in enumerate(examples)]


def transformers_warns(hf: dict[str, Any]) -> list[str]:
    """The warnings transformers' config class gives when it builds ``hf`` (its once-only warnings
    included: their cache is cleared first)."""
    import logging

    from converters.hf_reference import captured_warnings, hf_config

    cache_clear = getattr(getattr(logging.Logger, "warning_once", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    with captured_warnings() as messages:
        try:
            hf_config(hf)
        except Exception as exc:  # a config transformers refuses is no example either
            messages.append(f"{type(exc).__name__}: {exc}")
    return list(messages)
