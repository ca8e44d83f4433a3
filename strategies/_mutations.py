"""Single changes to a native config, for the ``unrepresentable_configs`` strategies: one layer's
block, attention or MLP changed, or every layer's, or a layer repeated so that two can differ; and
:func:`mutate`, the catalogue of changes the dense formats (phi3, olmo2, starcoder2, gpt_neox) draw
from.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from hypothesis import strategies as st

import native

from . import building_blocks as bb


def with_layers(cfg: native.ModelConfig, layers: list[native.BlockConfig]) -> native.ModelConfig:
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(layers))


def mutate_block(cfg: native.ModelConfig, layer: int, **changes) -> native.ModelConfig:
    layers = cfg.decoder.layers()
    layers[layer] = dataclasses.replace(layers[layer], **changes)
    return with_layers(cfg, layers)


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
    return with_layers(cfg, layers)


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
    def rotate_two(block):
        head_dim = max(4, block.attention.head_dim)
        rotary = native.DefaultRotary(theta=10000.0, fraction=bb.fraction_for(2, head_dim))
        attention = dataclasses.replace(block.attention, head_dim=head_dim, rotary=rotary)
        return dataclasses.replace(block, attention=attention)
    return every_block(cfg, rotate_two)


def every_block(cfg: native.ModelConfig, fn) -> native.ModelConfig:
    """``fn(block)`` on every layer."""
    return with_layers(cfg, [fn(b) for b in cfg.decoder.layers()])


def every_attention(cfg: native.ModelConfig, **changes) -> native.ModelConfig:
    return every_block(cfg, lambda b: dataclasses.replace(b, attention=dataclasses.replace(b.attention, **changes)))


def every_mlp(cfg: native.ModelConfig, **changes) -> native.ModelConfig:
    return every_block(cfg, lambda b: dataclasses.replace(b, mlp=dataclasses.replace(b.mlp, **changes)))


#: What :func:`mutate` can change, each a feature some of these formats cannot hold, and the text
#: the refusal must contain (the native field, or the HF key a conflict is reported under).
MUTATIONS = {
    "q_bias_flip": "q_bias", "o_bias_flip": "o_bias", "qk_norm": "qk_norm", "qk_norm_scope": "qk_norm",
    "mlp_gated_flip": "gated", "mlp_bias_flip": "bias", "norm_kind": "norm", "norm_bias_off": "bias",
    "final_norm_eps": "eps", "placement": "placement", "no_rotary": "rotary", "partial_rotary": "fraction",
    "window": "window", "window_pattern": "window", "multiplier": "multiplier", "final_softcap": "final_softcap",
    "logit_softcap": "logit_softcap", "softmax_scale": "softmax_scale", "moe": "mlp",
}


def mutate(cfg: native.ModelConfig, kind: str, draw, placements: Sequence[str] = ("pre",)
           ) -> tuple[native.ModelConfig, str]:
    """``(cfg with one feature changed in every layer or in the model, the text its refusal must
    contain)``: see :data:`MUTATIONS`. ``placements`` are the ones the format allows."""
    changed = _mutate(cfg, kind, draw, placements)
    return changed if isinstance(changed, tuple) else (changed, MUTATIONS[kind])


def _mutate(cfg, kind, draw, placements):
    block = cfg.decoder.blocks[0]
    a = block.attention
    if kind in ("q_bias_flip", "o_bias_flip"):
        name = kind.removesuffix("_flip")
        return every_attention(cfg, **{name: not getattr(a, name)})
    if kind == "qk_norm":
        return every_attention(cfg, qk_norm=None if a.qk_norm is not None else native.RMSNormConfig(eps=1e-6))
    if kind == "qk_norm_scope":
        norm = a.qk_norm or native.RMSNormConfig(eps=1e-6)
        return every_attention(cfg, qk_norm=norm, qk_norm_scope="head" if a.qk_norm_scope == "full" else "full")
    if kind == "mlp_gated_flip":
        return every_mlp(cfg, gated=not block.mlp.gated)
    if kind == "mlp_bias_flip":
        return every_mlp(cfg, bias=not block.mlp.bias)
    if kind == "norm_kind":
        eps = block.norm.eps
        other = native.LayerNormConfig(eps=eps) if isinstance(block.norm, native.RMSNormConfig) else native.RMSNormConfig(eps=eps)
        return every_block(cfg, lambda b: dataclasses.replace(b, norm=other))
    if kind == "norm_bias_off":
        return every_block(cfg, lambda b: dataclasses.replace(b, norm=native.LayerNormConfig(eps=b.norm.eps, bias=False)))
    if kind == "final_norm_eps":
        return dataclasses.replace(cfg, final_norm=dataclasses.replace(cfg.final_norm, eps=cfg.final_norm.eps * 2))
    if kind == "placement":
        others = [p for p in native.config.PLACEMENTS if p not in placements]
        return every_block(cfg, lambda b: dataclasses.replace(b, placement=draw(st.sampled_from(others))))
    if kind == "no_rotary":
        return every_attention(cfg, rotary=native.NoRotary())
    if kind == "partial_rotary":
        half = draw(st.integers(1, max(1, (a.head_dim - 1) // 2)))
        fraction = bb.fraction_for(2 * half, a.head_dim) if a.head_dim >= 3 else 1.0
        if fraction == 1.0:  # no partial rotation fits head_dim 2: refuse rotary altogether
            return every_attention(cfg, rotary=native.NoRotary()), "rotary"
        return every_attention(cfg, rotary=native.DefaultRotary(theta=10000.0, fraction=fraction))
    if kind == "window":
        return every_attention(cfg, window=draw(bb.windows()))
    if kind == "window_pattern":
        blocks = at_least_layers(cfg, 2).decoder.layers()
        return with_layers(cfg, [dataclasses.replace(b, attention=dataclasses.replace(
            b.attention, window=3 if i % 2 == 0 else None)) for i, b in enumerate(blocks)])
    if kind == "multiplier":
        return dataclasses.replace(cfg, embeddings=dataclasses.replace(cfg.embeddings, multiplier=2.0))
    if kind == "final_softcap":
        return dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, final_softcap=30.0))
    if kind == "logit_softcap":
        return every_attention(cfg, logit_softcap=50.0)
    if kind == "softmax_scale":
        return every_attention(cfg, softmax_scale=0.5)
    if kind == "moe":
        return every_block(cfg, lambda b: dataclasses.replace(b, mlp=native.MoEConfig(experts=2, top_k=1, intermediate=4)))
    raise ValueError(f"unknown mutation {kind!r}; choose from {MUTATIONS}")


@st.composite
def unrepresentable(draw, configs: st.SearchStrategy[native.ModelConfig], kinds: Sequence[str],
                    placements: Sequence[str] = ("pre",)):
    """``(cfg, field)``: an accepted config with one of ``kinds`` of :data:`MUTATIONS` applied, and
    the text the ``ConversionError`` must contain."""
    kind = draw(st.sampled_from(tuple(kinds)))
    return mutate(draw(configs), kind, draw, placements)
