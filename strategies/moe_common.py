"""Pieces shared by the MoE strategies (mixtral, qwen2_moe, qwen3_moe).

HF config dicts are drawn *independently of the converters*: key names and encodings are written
here again from the transformers config classes, so a converter bug cannot shape its own test
inputs. Everything is small (hidden <= 48, <= 3 layers, <= 6 experts, vocab <= 97).

- :func:`rope_keys`: a native rotary written as HF does, v5 (``rope_parameters``) or v4
  (``rope_theta`` + ``rope_scaling`` keyed by ``type`` or ``rope_type``).
- :func:`token_and_training_keys`: the HF-only keys real configs carry (token ids inside the vocab,
  ``initializer_range``, ``use_cache``, dropout, router loss settings), each present or absent.
- :func:`file_keys`: the keys that describe the file (``torch_dtype``, ``transformers_version``,
  ``architectures``).
- :func:`scaled_down`: a real config shrunk to test size, every other key kept.

Native side: :func:`mutations` (single changes no MoE format here can express, keyed by the field the
refusal must name) and the ``mutate_*`` helpers the per-architecture modules add their own with.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from hypothesis import strategies as st

import native

from . import building_blocks as bb

#: rotary kinds every MoE class here accepts (they all use ROPE_INIT_FUNCTIONS; no "none")
ROPE_KINDS = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def rope_parameters(rotary) -> dict[str, Any]:
    """The v5 ``rope_parameters`` of a native rotary (full rotation only)."""
    out: dict[str, Any] = {"rope_type": rotary.kind, "rope_theta": rotary.theta}
    if isinstance(rotary, native.LongRopeRotary):
        out.update(short_factor=list(rotary.short_factor), long_factor=list(rotary.long_factor),
                   original_max_position_embeddings=rotary.original_max_position_embeddings)
        for key in ("factor", "attention_factor"):
            if getattr(rotary, key) is not None:
                out[key] = getattr(rotary, key)
    elif isinstance(rotary, native.YarnRotary):
        out.update(original_max_position_embeddings=rotary.original_max_position_embeddings,
                   beta_fast=rotary.beta_fast, beta_slow=rotary.beta_slow, truncate=rotary.truncate)
        for key in ("factor", "mscale", "mscale_all_dim", "attention_factor"):
            if getattr(rotary, key) is not None:
                out[key] = getattr(rotary, key)
    elif isinstance(rotary, native.Llama3Rotary):
        out.update(factor=rotary.factor, low_freq_factor=rotary.low_freq_factor,
                   high_freq_factor=rotary.high_freq_factor,
                   original_max_position_embeddings=rotary.original_max_position_embeddings)
    elif isinstance(rotary, native.LinearRotary):  # linear and dynamic
        out["factor"] = rotary.factor
    return out


@st.composite
def rope_keys(draw, rotary) -> dict[str, Any]:
    """``{"rope_parameters": …}`` (v5) or ``{"rope_theta": …, "rope_scaling": …}`` (v4, scaling
    ``null`` for plain RoPE, keyed by ``type`` or ``rope_type``)."""
    params = rope_parameters(rotary)
    if draw(st.booleans()):
        return {"rope_parameters": params}
    theta = params.pop("rope_theta")
    kind = params.pop("rope_type")
    if kind == "default" and draw(st.booleans()):
        return {"rope_theta": theta, "rope_scaling": None} if draw(st.booleans()) else {"rope_theta": theta}
    params[draw(st.sampled_from(("rope_type", "type")))] = kind
    return {"rope_theta": theta, "rope_scaling": params}


def _maybe(key: str, values: st.SearchStrategy) -> st.SearchStrategy[dict]:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


@st.composite
def token_and_training_keys(draw, vocab_size: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Carried HF keys, each present or absent. ``extra`` names MoE training keys to draw too:
    ``output_router_logits``, ``router_aux_loss_coef``, ``router_jitter_noise``."""
    token = st.one_of(st.none(), st.integers(0, vocab_size - 1))
    out: dict[str, Any] = {}
    for key, values in (("bos_token_id", token), ("eos_token_id", st.one_of(token, st.lists(
            st.integers(0, vocab_size - 1), min_size=1, max_size=2))), ("pad_token_id", token),
            ("initializer_range", st.sampled_from([0.02, 0.006])), ("use_cache", st.booleans()),
            ("attention_dropout", st.sampled_from([0.0, 0.1]))):
        out.update(draw(_maybe(key, values)))
    extras = {
        "output_router_logits": st.booleans(),
        "router_aux_loss_coef": st.sampled_from([0.001, 0.02]),
        "router_jitter_noise": st.sampled_from([0.0, 0.01]),
    }
    for key in extra:
        out.update(draw(_maybe(key, extras[key])))
    return out


@st.composite
def file_keys(draw, architecture: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out.update(draw(_maybe("architectures", st.just([architecture]))))
    out.update(draw(_maybe("torch_dtype", st.sampled_from(["bfloat16", "float32"]))))
    out.update(draw(_maybe("transformers_version", st.sampled_from(["4.36.0.dev0", "4.51.0", "5.0.0"]))))
    return out


@st.composite
def attention_sizes(draw) -> dict[str, Any]:
    """``hidden_size``, head counts and ``head_dim`` (absent/``None``-able when it is the default
    ``hidden // heads``; the caller decides which spellings its class allows)."""
    # hidden = heads * head_dim half the time: then head_dim may also be left out (an even default)
    policy = draw(st.sampled_from(("free", "heads_times_head_dim")))
    layout = draw(bb.head_layouts(max_q_width=bb.MAX_HIDDEN if policy != "free" else None))
    hidden = draw(bb.hidden_for(layout, policy, min_value=max(bb.MIN_HIDDEN, layout.heads)))
    return {"hidden_size": hidden, "num_attention_heads": layout.heads,
            "num_key_value_heads": layout.kv_heads, "head_dim": layout.head_dim}


@st.composite
def head_dim_keys(draw, sizes: dict[str, Any], *, null_allowed: bool) -> dict[str, Any]:
    """How ``head_dim`` is spelled: drawn freely, or the default spelled explicitly, left out, or
    ``null`` (where the class reads ``null`` as the default). Left out or ``null`` only when the
    heads divide ``hidden_size`` (the converters refuse transformers' floored default)."""
    default = sizes["hidden_size"] // sizes["num_attention_heads"]
    choice = draw(st.sampled_from(("drawn", "default_explicit", "absent") + (("null",) if null_allowed else ())))
    if choice == "drawn" or default < 2 or default % 2 or sizes["hidden_size"] % sizes["num_attention_heads"]:
        return {"head_dim": sizes["head_dim"]}
    if choice == "default_explicit":
        return {"head_dim": default}
    return {} if choice == "absent" else {"head_dim": None}


def head_dim_of(hf: dict[str, Any]) -> int:
    return hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]


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
    layers = []
    for block in cfg.decoder.layers():
        a = block.attention
        rotary = hf_buildable_rotary(a.rotary, a.head_dim, cfg.max_position_embeddings)
        layers.append(block if rotary == a.rotary else dataclasses.replace(
            block, attention=dataclasses.replace(a, rotary=rotary)))
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(layers))


@st.composite
def rotary_for(draw, head_dim: int, max_position: int):
    rotary = draw(bb.rotaries(head_dim, max_position, kinds=ROPE_KINDS, fractions=("full",), hf_valid=True))
    return hf_buildable_rotary(rotary, head_dim, max_position)


def scaled_down(real: dict[str, Any], **sizes: Any) -> dict[str, Any]:
    """A real config at test size: the given keys replaced, every other key (names, spellings,
    token ids clipped into the vocab) kept."""
    out = {**real, **sizes}
    vocab = out.get("vocab_size")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = out.get(key)
        if isinstance(value, int) and vocab is not None and value >= vocab:
            out[key] = value % vocab
    return out


# ------------------------------------------------------------------------- native mutations
# Unrepresentable configs are drawn field first (uniformly over a fixed list of breakers), then a
# layer the breaker applies to; a breaker that needs a layer the config lacks (a second layer, a
# sparse or a dense one) makes one. So every refusal is reached about equally often.

def mutate_block(cfg: native.ModelConfig, layer: int, **changes) -> native.ModelConfig:
    layers = cfg.decoder.layers()
    layers[layer] = dataclasses.replace(layers[layer], **changes)
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(layers))


def mutate_attention(cfg, layer, **changes):
    block = cfg.decoder.layer(layer)
    return mutate_block(cfg, layer, attention=dataclasses.replace(block.attention, **changes))


def mutate_mlp(cfg, layer, **changes):
    block = cfg.decoder.layer(layer)
    return mutate_block(cfg, layer, mlp=dataclasses.replace(block.mlp, **changes))


def at_least_layers(cfg: native.ModelConfig, n: int) -> native.ModelConfig:
    """``cfg`` with its last layer repeated up to ``n`` layers."""
    layers = cfg.decoder.layers()
    layers += [layers[-1]] * (n - len(layers))
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(layers))


def layers_of(cfg: native.ModelConfig, kind: type, make, count: int = 1) -> tuple[native.ModelConfig, list[int]]:
    """``cfg`` with at least ``count`` layers whose ``mlp`` is a ``kind`` (made by ``make(cfg)`` from
    the last layers when missing, adding layers if needed), and the indices of those layers."""
    cfg = at_least_layers(cfg, count)
    have = [i for i, b in enumerate(cfg.decoder.layers()) if isinstance(b.mlp, kind)]
    for i in reversed(range(cfg.num_layers)):
        if len(have) >= count:
            break
        if i not in have:
            cfg = mutate_block(cfg, i, mlp=make(cfg))
            have.append(i)
    return cfg, sorted(have)


def other_activation(activation: str) -> str:
    return "relu" if activation != "relu" else "silu"


def partial_rotary(cfg: native.ModelConfig) -> native.ModelConfig:
    """Every layer rotating 2 of its (at least 4) head dims."""
    layers = []
    for block in cfg.decoder.layers():
        head_dim = max(4, block.attention.head_dim)
        rotary = native.DefaultRotary(theta=10000.0, fraction=bb.fraction_for(2, head_dim))
        layers.append(dataclasses.replace(block, attention=dataclasses.replace(block.attention, head_dim=head_dim,
                                                                                rotary=rotary)))
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(layers))


#: breakers every MoE format here refuses: ``(cfg, layer, draw) -> cfg``
COMMON_BREAKERS = {
    "placement": lambda cfg, i, draw: mutate_block(cfg, i, placement=draw(st.sampled_from(("post", "sandwich", "parallel")))),
    "softmax_scale": lambda cfg, i, draw: mutate_attention(cfg, i, softmax_scale=draw(bb.positive_floats(0.05, 1.0))),
    "logit_softcap": lambda cfg, i, draw: mutate_attention(cfg, i, logit_softcap=draw(bb.positive_floats(0.5, 60.0))),
    "rotary": lambda cfg, i, draw: mutate_attention(cfg, i, rotary=native.NoRotary()),
    "fraction": lambda cfg, i, draw: partial_rotary(cfg),
    "multiplier": lambda cfg, i, draw: dataclasses.replace(
        cfg, embeddings=dataclasses.replace(cfg.embeddings, multiplier=draw(bb.positive_floats(0.5, 10.0)))),
    "final_softcap": lambda cfg, i, draw: dataclasses.replace(
        cfg, head=dataclasses.replace(cfg.head, final_softcap=draw(bb.positive_floats(0.5, 60.0)))),
    "norm": lambda cfg, i, draw: mutate_block(cfg, i, norm=native.LayerNormConfig(eps=cfg.decoder.layer(i).norm.eps)),
}


@st.composite
def broken(draw, configs: st.SearchStrategy, breakers: dict) -> tuple[str, native.ModelConfig]:
    """``(field, cfg)``: a drawn config broken by one drawn breaker (``breakers[field](cfg, layer,
    draw)``), the field the refusal must name."""
    cfg = draw(configs)
    field = draw(st.sampled_from(sorted(breakers)))
    layer = draw(st.integers(0, cfg.num_layers - 1))
    return field, breakers[field](cfg, layer, draw)
