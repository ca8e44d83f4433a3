"""HF config dicts, explicit examples and unrepresentable native configs for the Llama family
(``llama``, ``mistral``, ``qwen2``, ``qwen3``), shared by those four strategy modules.

HF dicts are written from the transformers config classes, independently of the converters (the
pieces come from :mod:`strategies.moe_common`, which does the same for the MoE classes): sizes, the
``head_dim`` spellings each class accepts, rope in the v5 or v4 form, the bias and window keys of
each class, and the HF-only keys real configs carry.

Unrepresentable configs are an accepted native config with one feature changed, paired with the
native field the ``ConversionError`` must name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import building_blocks as bb
from ._mutations import at_least_layers, every_attention, mutate_attention, mutate_block, mutate_mlp


# ------------------------------------------------------------------------------------ HF dicts
@st.composite
def hf_configs(draw, model_type: str, architecture: str, *, hidden_multiple_of_heads: bool = False,
               bias_keys: tuple[str, ...] = (), null_head_dim: bool = False, head_dim_required: bool = False,
               windows: str = "none", carried: tuple[str, ...] = (), kv_default: int | None = None) -> dict[str, Any]:
    """One ``{model_type}`` config dict.

    - ``bias_keys``: boolean keys the class has (``attention_bias``, ``mlp_bias``), each present or not;
    - ``null_head_dim``: ``head_dim: null`` means ``hidden // heads``; ``head_dim_required``: the
      class default (Qwen3's 128) is not the derived one, so ``head_dim`` is always written;
    - ``windows``: ``"none"``, ``"mistral"`` (``sliding_window``: null or a size) or ``"qwen"``
      (``use_sliding_window``/``sliding_window``/``max_window_layers``/``layer_types``);
    - ``carried``: extra inert keys of the class (``pretraining_tp``, ``use_mrope``);
    - ``kv_default``: the class default of ``num_key_value_heads`` (``None``: the head count), so
      the key is left out only where that default is the drawn value.
    """
    head_dim = "always" if head_dim_required else "any_or_null" if null_head_dim else "any"
    hf, layout = draw(hc.hf_sizes(model_type, hidden=("multiple_of_heads",) if hidden_multiple_of_heads else
                                  ("free", "heads_times_head_dim"), hidden_at_least_heads=True,
                                  kv_heads="optional", kv_default=kv_default, head_dim=head_dim))
    num_layers, vocab, max_position = hf["num_hidden_layers"], hf["vocab_size"], hf["max_position_embeddings"]
    hf.update(draw(hc.optional_keys({"rms_norm_eps": bb.epsilons(), "tie_word_embeddings": st.booleans(),
                                     "hidden_act": st.sampled_from(sorted(hc.ACTIVATIONS.values())),
                                     **{key: st.booleans() for key in bias_keys}})))
    if windows == "mistral" and draw(st.booleans()):
        hf["sliding_window"] = draw(st.one_of(st.none(), bb.windows()))
    elif windows == "qwen":
        from .qwen2_moe import window_keys

        hf.update(draw(window_keys(num_layers)))
    hf.update(draw(hc.rope_keys(draw(hc.rope_parameters(layout.head_dim, max_position)))))
    hf.update(draw(hc.token_and_training_keys(vocab)))
    for key in carried:
        if draw(st.booleans()):
            hf[key] = {"pretraining_tp": 1, "use_mrope": False}[key]
    hf.update(draw(hc.file_keys(architecture, **hc.LATER_FILES)))
    return hf


def examples(model_type: str, real: str | None, small: Callable[[dict], dict] | None) -> list[dict]:
    """``@example`` HF dicts: the transformers default config of the class, the real config
    (verbatim, config properties only) and ``small(real)`` scaled down for the tensor properties."""
    out = [hc.default_config(model_type)]
    if real is not None:
        published = hc.real_config(real)
        out.append(published)
        if small is not None:
            out.append(small(published))
    return out


# ---------------------------------------------------------------------------- unrepresentable
def common_breaks(cfg: native.ModelConfig, layer: int) -> dict[str, native.ModelConfig]:
    """Changes no Llama-family format can express, keyed by the field the refusal must name."""
    block = cfg.decoder.layer(layer)
    a = block.attention
    out = {
        "placement": mutate_block(cfg, layer, placement="post"),
        "qk_norm": mutate_attention(cfg, layer, qk_norm=native.RMSNormConfig(eps=1e-6)),
        "softmax_scale": mutate_attention(cfg, layer, softmax_scale=0.3),
        "logit_softcap": mutate_attention(cfg, layer, logit_softcap=30.0),
        "rotary": mutate_attention(cfg, layer, rotary=native.NoRotary()),
        "multiplier": dataclasses.replace(cfg, embeddings=dataclasses.replace(cfg.embeddings, multiplier=2.0)),
        "final_softcap": dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, final_softcap=30.0)),
        "norm": mutate_block(cfg, layer, norm=native.LayerNormConfig(eps=block.norm.eps)),
        "gated": mutate_mlp(cfg, layer, gated=False),
        "mlp": mutate_block(cfg, layer, mlp=native.MoEConfig(experts=2, top_k=1, intermediate=4,
                                                              activation=block.mlp.activation)),
        "final_norm": dataclasses.replace(cfg, final_norm=native.RMSNormConfig(eps=cfg.final_norm.eps * 2)),
    }
    if a.head_dim >= 4:
        out["fraction"] = mutate_attention(cfg, layer, rotary=native.DefaultRotary(
            fraction=bb.fraction_for(2, a.head_dim)))
    two = at_least_layers(cfg, 2)
    first = two.decoder.layer(0).attention
    out["attention.heads"] = mutate_attention(two, 0, heads=first.heads * 2, kv_heads=first.kv_heads * 2)
    return out


def bias_breaks(cfg: native.ModelConfig, layer: int, allowed: tuple[bb.BiasPattern, ...]) -> dict[str, native.ModelConfig]:
    """One attention bias flipped (into a pattern the format lacks), keyed by that bias."""
    a = cfg.decoder.layer(layer).attention
    out = {}
    for name in ("q_bias", "k_bias", "v_bias", "o_bias"):
        flipped = {n: getattr(a, n) for n in ("q_bias", "k_bias", "v_bias", "o_bias")}
        flipped[name] = not flipped[name]
        if bb.BiasPattern(*flipped.values()) not in allowed:
            out[name] = mutate_attention(cfg, layer, **{name: flipped[name]})
    return out


def window_breaks(cfg: native.ModelConfig, kind: str) -> dict[str, native.ModelConfig]:
    """Windows the format cannot hold: any window (``none``), or two sizes at once."""
    if kind == "none":
        return {"attention.window": every_attention(cfg, window=3)}
    two = at_least_layers(cfg, 2)
    return {"attention.window": mutate_attention(mutate_attention(two, 0, window=2), 1, window=5)}


@st.composite
def unrepresentable_configs(draw, base: st.SearchStrategy, *, biases: tuple[bb.BiasPattern, ...],
                            mlp_bias: bool, windows: str, extra: Callable | None = None):
    """``(config, field)``: an accepted config with one feature the format cannot express."""
    cfg = draw(base)
    layer = draw(st.integers(0, cfg.num_layers - 1))
    cases = common_breaks(cfg, layer)
    cases.update(bias_breaks(cfg, layer, biases))
    cases.update(window_breaks(cfg, windows))
    if not mlp_bias:  # (the refusal names the MLP's field as "bias", within its layer)
        cases["bias"] = mutate_mlp(cfg, layer, bias=True)
    if extra is not None:
        cases.update(extra(cfg, layer))
    field = draw(st.sampled_from(sorted(cases)))
    return cases[field], field
