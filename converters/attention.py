"""Attention keys shared by the converters: ``num_key_value_heads`` with its class default,
``head_dim`` (for the classes that read ``getattr(config, "head_dim", None) or hidden // heads``:
:class:`HeadDim`), and the bias switches: one HF flag for several of them (:func:`bias_flag`) or a
pattern the class hard-codes (:func:`fixed_biases`)."""
from __future__ import annotations

from typing import Any

from .config_primitives import Custom, Default, HFView
from .declaration import LayerwisePrimitive
from .errors import ConversionError


def kv_heads(class_default: int | None = None, null_is_heads: bool = False) -> Default:
    """``num_key_value_heads`` as the HF class reads it: absent → ``class_default`` (``None``: the
    head count, as LlamaConfig; a number for the classes that default it to one); ``null`` → the
    head count where the class's ``__post_init__`` does that (``null_is_heads``), else refused
    (MistralConfig and transformers 5's MoE classes refuse it too)."""

    def compute(hf: HFView):
        if hf.has("num_key_value_heads"):  # explicitly null
            if null_is_heads:
                return hf.get("num_attention_heads")
            raise ConversionError("config.json: num_key_value_heads=null is not supported (give the number)")
        return hf.get("num_attention_heads") if class_default is None else class_default

    return Default("attention.kv_heads", "num_key_value_heads", compute)


def default_head_dim(hf: HFView) -> int:
    """``hidden_size // num_attention_heads``, the head width HF classes assume without ``head_dim``."""
    return _floored_head_dim(hf.get("hidden_size"), hf.get("num_attention_heads"))


def _floored_head_dim(hidden_size: Any, heads: Any) -> int:
    for key, value in (("hidden_size", hidden_size), ("num_attention_heads", heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConversionError(f"config.json: {key}={value!r} must be a positive integer")
    return hidden_size // heads


class HeadDim(LayerwisePrimitive):
    """``head_dim`` read as ``getattr(config, "head_dim", None) or hidden // heads``.

    Export writes it when it differs from ``hidden_size // num_attention_heads``, when the heads do
    not divide ``hidden_size`` (the floor default is a transformers quirk other readers refuse), or
    when metadata says config.json had it explicitly; otherwise ``absent`` (``None``: write ``"head_dim": null``,
    as MixtralConfig saves it; ``OMIT``: leave the key out, as for classes without the field).
    Import: absent (or ``null`` where ``null_is_default``) means the default, refused when the
    heads do not divide ``hidden_size`` (as ``convcheck convert`` refuses it).

    ``explicit_for_rope``: rope types whose validation in transformers reads ``config.head_dim``
    directly (MixtralConfig's longrope check, and the yarn and dynamic inits of transformers 5.23,
    multiply it, so ``null`` fails): written, unless the source config.json had it null (kept as it
    was: ``metadata.head_dim_null``)."""

    OMIT = object()
    native_paths = ("attention.head_dim",)
    hf_keys = ("head_dim",)

    def __init__(self, absent: Any = OMIT, null_is_default: bool = False, explicit_for_rope: tuple[str, ...] = ()):
        self.absent = absent
        self.null_is_default = null_is_default
        self.explicit_for_rope = explicit_for_rope

    def export(self, layers, get_model):
        dims = sorted({block.attention.head_dim for block in layers})
        if len(dims) > 1:
            raise ConversionError(f"attention.head_dim differs between layers ({dims}); this format has one head_dim")
        head_dim = dims[0]
        hidden, heads = get_model("hidden_size"), layers[0].attention.heads
        default = _floored_head_dim(hidden, heads)
        metadata = get_model("metadata")
        explicit_rope = any(block.attention.rotary.kind in self.explicit_for_rope for block in layers)
        if (head_dim != default or hidden % heads or metadata.get("head_dim") == head_dim
                or (explicit_rope and not metadata.get("head_dim_null"))):
            return {"head_dim": head_dim}
        return {} if self.absent is self.OMIT else {"head_dim": self.absent}

    def import_(self, hf, num_layers):
        default = default_head_dim(hf)
        value = hf.get("head_dim", None)
        if value is None:
            if hf.has("head_dim") and not self.null_is_default:
                raise ConversionError("config.json: head_dim=null is not supported by this class (omit it)")
            if hf.get("hidden_size") % hf.get("num_attention_heads"):
                raise ConversionError(f"config.json: hidden_size={hf.get('hidden_size')} is not divisible by "
                                      f"num_attention_heads={hf.get('num_attention_heads')} and no head_dim is given "
                                      "(transformers would floor it; give head_dim)")
            # a null head_dim beside a rope kind that export writes explicitly: say so, to write it back
            kept = hf.get("rope_parameters.rope_type", "default") in self.explicit_for_rope
            return [{"attention.head_dim": default}] * num_layers, ({"metadata.head_dim_null": True} if kept else {})
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConversionError(f"config.json: head_dim={value!r} must be a positive integer")
        always = (hf.get("rope_parameters.rope_type", "default") in self.explicit_for_rope
                  or hf.get("hidden_size") % hf.get("num_attention_heads"))
        metadata = {"metadata.head_dim": value} if value == default and not always else {}
        return [{"attention.head_dim": value}] * num_layers, metadata


def fixed_biases(q: bool, k: bool, v: bool, o: bool, reason: str) -> Custom:
    """A bias pattern the HF class hard-codes: set on import, any other pattern refused on export."""
    expected = {"attention.q_bias": q, "attention.k_bias": k, "attention.v_bias": v, "attention.o_bias": o}

    def export(get):
        for path, value in expected.items():
            if get(path) != value:
                raise ConversionError(f"{path}={get(path)} cannot be expressed: {reason}")
        return {}

    return Custom(tuple(expected), (), export, lambda hf: dict(expected))


ATTENTION_BIASES = ("attention.q_bias", "attention.k_bias", "attention.v_bias", "attention.o_bias")


def bias_flag(hf_key: str, paths: tuple[str, ...] = ATTENTION_BIASES, default: bool = False) -> Custom:
    """One HF flag (``attention_bias``, Qwen2-MoE's ``qkv_bias``, Starcoder2's ``use_bias``) for
    several native bias switches (block-relative paths): they must agree on export, and a path the
    block's section lacks (``mlp.bias`` of an MoE feed-forward) is refused by its section's kind."""

    def read(get, path):
        try:
            return get(path)
        except AttributeError:
            section = path.rsplit(".", 1)[0]
            raise ConversionError(f"{section}.kind={get(section).kind!r} cannot be expressed "
                                  f"(this format needs '{path}', set by '{hf_key}')") from None

    def export(get):
        values = {p: read(get, p) for p in paths}
        if len(set(values.values())) != 1:
            raise ConversionError(f"biases {values} must be all on or all off: this format has one '{hf_key}'")
        return {hf_key: values[paths[0]]}

    def import_(hf):
        value = hf.get(hf_key, default)
        if not isinstance(value, bool):
            raise ConversionError(f"config.json: {hf_key}={value!r} must be a boolean")
        return {p: value for p in paths}

    return Custom(paths, (hf_key,), export, import_)
