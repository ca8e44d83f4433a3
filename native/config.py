"""The native config schema: nested frozen dataclasses, one per section of the model.

Every field that changes the forward pass is declared with :func:`architecture`; the rest with
:func:`setting`. ``native.architecture_fields(cfg)`` lists the dotted paths of the former, and the
converter coverage checks are built on that list.

Per-layer heterogeneity is expressed by ``decoder.blocks`` (the distinct block kinds) and
``decoder.pattern`` (one block index per layer). The pair is canonicalised on construction, so two
configs describing the same model compare equal.

The sections with many variants have modules of their own: the rope kinds
(:mod:`native.rotary_config`) and the feed-forward kinds (:mod:`native.feedforward_config`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Union

from .feedforward_config import FeedForwardConfig, MLPConfig
from .rotary_config import DefaultRotary, LongRopeRotary, NoRotary, RotaryConfig, YarnRotary
from .schema import ConfigError, Section, architecture, from_plain, setting, to_plain
from .schema import check as _check, positive as _positive, positive_int as _positive_int

FORMAT_VERSION = 1

PLACEMENTS = ("pre", "post", "sandwich", "parallel")
QK_NORM_SCOPES = ("head", "full")


# ----------------------------------------------------------------------------------------- norms
@dataclass(frozen=True)
class RMSNormConfig(Section):
    """RMSNorm. ``zero_centered``: the stored weight ``w`` is the gain's offset from 1 and the model
    multiplies by ``1 + w`` (Gemma; Megatron's zero-centred gamma, ``layernorm_1p``). Storing the
    gain as the checkpoint has it keeps every conversion a rename: ``1 + w`` rounded to bf16 is not
    ``w`` any more."""

    kind = "rms_norm"
    eps: float = architecture(1e-5)
    zero_centered: bool = architecture(False)

    def __post_init__(self):
        _positive("norm", "eps", self.eps)
        _check(isinstance(self.zero_centered, bool), f"norm.zero_centered={self.zero_centered!r} must be a boolean")


@dataclass(frozen=True)
class LayerNormConfig(Section):
    """LayerNorm, with or without an additive bias."""

    kind = "layer_norm"
    eps: float = architecture(1e-5)
    bias: bool = architecture(True)

    def __post_init__(self):
        _positive("norm", "eps", self.eps)


NormConfig = Union[RMSNormConfig, LayerNormConfig]




# ------------------------------------------------------------------------------------ attention
@dataclass(frozen=True)
class AttentionConfig(Section):
    """Causal self-attention. MHA/GQA/MQA by ``kv_heads``; ``head_dim`` is free of hidden/heads."""

    heads: int = architecture(8)
    kv_heads: int = architecture(8)
    head_dim: int = architecture(64)
    q_bias: bool = architecture(False)
    k_bias: bool = architecture(False)
    v_bias: bool = architecture(False)
    o_bias: bool = architecture(False)
    qk_norm: RMSNormConfig | LayerNormConfig | None = architecture(None)
    qk_norm_scope: str = architecture("head")  # "head": per head (Qwen3, Gemma3); "full": whole projection (OLMo2)
    softmax_scale: float | None = architecture(None)  # None: head_dim ** -0.5
    logit_softcap: float | None = architecture(None)
    window: int | None = architecture(None)  # query i sees keys j with i - window < j <= i
    rotary: RotaryConfig = architecture(DefaultRotary())

    def __post_init__(self):
        _positive_int("attention", "heads", self.heads)
        _positive_int("attention", "kv_heads", self.kv_heads)
        _positive_int("attention", "head_dim", self.head_dim)
        _check(self.heads % self.kv_heads == 0, f"attention.kv_heads={self.kv_heads} must divide heads={self.heads}")
        _check(self.qk_norm_scope in QK_NORM_SCOPES, f"attention.qk_norm_scope={self.qk_norm_scope!r} must be one of {QK_NORM_SCOPES}")
        _positive("attention", "softmax_scale", self.softmax_scale, allow_none=True)
        _positive("attention", "logit_softcap", self.logit_softcap, allow_none=True)
        _positive_int("attention", "window", self.window, allow_none=True)
        rotary_dim = self.rotary.rotary_dim(self.head_dim)
        _check(rotary_dim % 2 == 0, f"attention.rotary: rotary dim {rotary_dim} (head_dim={self.head_dim} x fraction) must be even")
        _check(isinstance(self.rotary, NoRotary) or rotary_dim > 0,
               f"attention.rotary.fraction gives a rotary dim of 0 for head_dim={self.head_dim}")
        if isinstance(self.rotary, LongRopeRotary):
            _check(len(self.rotary.short_factor) == rotary_dim // 2,
                   f"attention.rotary.short_factor has {len(self.rotary.short_factor)} entries, rotary dim {rotary_dim} needs {rotary_dim // 2}")

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads




@dataclass(frozen=True)
class MLAConfig(Section):
    """Multi-head latent attention (DeepSeek-V2/V3).

    - queries: ``q = q_up(q_norm(q_down(x)))`` with a rank ``q_lora_rank`` bottleneck, or one
      projection ``q(x)`` when ``q_lora_rank`` is None (DeepSeek-V2-Lite); each head's query is
      ``[nope (qk_nope_head_dim); rope (qk_rope_head_dim)]``.
    - keys and values: ``kv_down(x) = [latent (kv_lora_rank); k_rope (qk_rope_head_dim)]``; the
      latent is RMS-normalised (``kv_norm``, eps ``lora_norm_eps``) and expanded by ``kv_up`` into
      each head's ``[k_nope; v (v_head_dim)]``; ``k_rope`` is one decoupled rotary key shared by
      every head.
    - rotary turns only the rope parts (of q and of the shared key), as interleaved pairs in the
      native layout; the nope parts never rotate.
    - softmax scale ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``, times ``mscale(factor,
      mscale_all_dim) ** 2`` for a YaRN rotary with ``mscale_all_dim`` (DeepSeek's rule).
    - ``bias``: biases on ``q_down``, ``kv_down`` and ``o`` (HF ``attention_bias``; a single q
      projection has none).
    No sliding window (``window`` is always None)."""

    kind = "mla"
    heads: int = architecture(8)
    q_lora_rank: int | None = architecture(None)
    kv_lora_rank: int = architecture(32)
    qk_nope_head_dim: int = architecture(16)
    qk_rope_head_dim: int = architecture(8)
    v_head_dim: int = architecture(16)
    lora_norm_eps: float = architecture(1e-6)
    bias: bool = architecture(False)
    rotary: RotaryConfig = architecture(DefaultRotary())

    def __post_init__(self):
        for name in ("heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _positive_int("attention", name, getattr(self, name))
        _positive_int("attention", "q_lora_rank", self.q_lora_rank, allow_none=True)
        _positive("attention", "lora_norm_eps", self.lora_norm_eps)
        _check(self.qk_rope_head_dim % 2 == 0, f"attention.qk_rope_head_dim={self.qk_rope_head_dim} must be even")
        _check(not isinstance(self.rotary, NoRotary) and self.rotary.fraction == 1.0,
               "attention.rotary: MLA rotates its whole rope part (a rotary kind with fraction 1.0)")
        if isinstance(self.rotary, LongRopeRotary):
            _check(len(self.rotary.short_factor) == self.qk_rope_head_dim // 2,
                   f"attention.rotary.short_factor has {len(self.rotary.short_factor)} entries, "
                   f"qk_rope_head_dim {self.qk_rope_head_dim} needs {self.qk_rope_head_dim // 2}")
        if isinstance(self.rotary, YarnRotary) and self.rotary.mscale_all_dim:
            _check(self.rotary.factor is not None,
                   "attention.rotary.factor: the MLA softmax scale reads the YaRN factor; give it explicitly")

    @property
    def head_dim(self) -> int:
        """The per-head width the rotary table is built for: the rope part."""
        return self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def window(self) -> None:
        return None

    @property
    def softmax_scale(self) -> float:
        scale = self.qk_head_dim ** -0.5
        rotary = self.rotary
        if isinstance(rotary, YarnRotary) and rotary.mscale_all_dim and rotary.factor > 1:
            m = 0.1 * rotary.mscale_all_dim * math.log(rotary.factor) + 1.0
            scale *= m * m
        return scale


# ---------------------------------------------------------------------------------------- block
@dataclass(frozen=True)
class BlockConfig(Section):
    """One decoder layer. ``placement``:
    - ``pre``: ``h = x + attn(n1(x)); y = h + mlp(n2(h))`` (Llama)
    - ``post``: ``h = x + n1(attn(x)); y = h + n2(mlp(h))`` (OLMo2)
    - ``sandwich``: ``h = x + n1b(attn(n1(x))); y = h + n2b(mlp(n2(h)))`` (Gemma2/3)
    - ``parallel``: ``y = x + attn(n1(x)) + mlp(n2(x))`` (GPT-NeoX)
    """

    placement: str = architecture("pre")
    norm: NormConfig = architecture(RMSNormConfig())
    attention: AttentionConfig | MLAConfig = architecture(AttentionConfig())
    mlp: FeedForwardConfig = architecture(MLPConfig())

    def __post_init__(self):
        _check(self.placement in PLACEMENTS, f"block.placement={self.placement!r} must be one of {PLACEMENTS}")


@dataclass(frozen=True)
class DecoderConfig(Section):
    """``blocks`` are the distinct layer kinds; ``pattern[i]`` is the block index of layer ``i``.
    Canonical on construction: duplicate blocks merged, blocks ordered by first use, unused ones
    dropped, so equality of configs is equality of models."""

    blocks: tuple[BlockConfig, ...] = architecture((BlockConfig(),))
    pattern: tuple[int, ...] = architecture((0, 0))

    def __post_init__(self):
        blocks = tuple(self.blocks)
        pattern = tuple(self.pattern)
        _check(len(blocks) > 0, "decoder.blocks must not be empty")
        _check(len(pattern) > 0, "decoder.pattern must name at least one layer")
        for i, index in enumerate(pattern):
            _check(isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(blocks),
                   f"decoder.pattern[{i}]={index!r} is not a block index (0..{len(blocks) - 1})")
        for i, block in enumerate(blocks):
            _check(isinstance(block, BlockConfig), f"decoder.blocks[{i}] must be a BlockConfig")
        canonical: list[BlockConfig] = []
        new_pattern = []
        for index in pattern:
            block = blocks[index]
            if block not in canonical:
                canonical.append(block)
            new_pattern.append(canonical.index(block))
        self._set("blocks", tuple(canonical))
        self._set("pattern", tuple(new_pattern))

    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    def layer(self, i: int) -> BlockConfig:
        return self.blocks[self.pattern[i]]

    def layers(self) -> list[BlockConfig]:
        return [self.blocks[i] for i in self.pattern]

    @classmethod
    def from_layers(cls, layers: list[BlockConfig]) -> "DecoderConfig":
        """Build from one BlockConfig per layer (converters use this)."""
        return cls(blocks=tuple(layers), pattern=tuple(range(len(layers))))


# ------------------------------------------------------------------------------ embedding, head
@dataclass(frozen=True)
class EmbeddingConfig(Section):
    vocab_size: int = architecture(256)
    multiplier: float | None = architecture(None)  # Gemma: sqrt(hidden), cast to the weight dtype

    def __post_init__(self):
        _positive_int("embeddings", "vocab_size", self.vocab_size)
        _positive("embeddings", "multiplier", self.multiplier, allow_none=True)


@dataclass(frozen=True)
class HeadConfig(Section):
    tied: bool = architecture(False)  # logits = h @ embedding^T; no output weight stored
    final_softcap: float | None = architecture(None)

    def __post_init__(self):
        _positive("head", "final_softcap", self.final_softcap, allow_none=True)


# ---------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelConfig(Section):
    hidden_size: int = architecture(256)
    max_position_embeddings: int = architecture(2048)  # read by dynamic/yarn/longrope rotary
    embeddings: EmbeddingConfig = architecture(EmbeddingConfig())
    decoder: DecoderConfig = architecture(DecoderConfig())
    final_norm: NormConfig = architecture(RMSNormConfig())
    head: HeadConfig = architecture(HeadConfig())
    init_std: float = setting(0.02)
    metadata: dict = setting(None)  # carried HF keys that do not change the forward pass

    def __post_init__(self):
        _positive_int("model", "hidden_size", self.hidden_size)
        _positive_int("model", "max_position_embeddings", self.max_position_embeddings)
        _positive("model", "init_std", self.init_std)
        if self.metadata is None:
            self._set("metadata", {})
        _check(isinstance(self.metadata, dict), "model.metadata must be a dict")
        json.dumps(self.metadata)  # metadata must stay JSON-serialisable (lossless to_dict)

    # -- convenience --------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.decoder.num_layers

    @property
    def vocab_size(self) -> int:
        return self.embeddings.vocab_size

    def to_dict(self) -> dict[str, Any]:
        """Lossless JSON form, with the format version."""
        return {"format_version": FORMAT_VERSION, **to_plain(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ConfigError(f"format_version={version!r}: this convcheck reads format version {FORMAT_VERSION}")
        return from_plain(cls, data, "")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


def default_embedding_multiplier(hidden_size: int) -> float:
    """Gemma's embedding normaliser, as a float (cast to the weight dtype at run time). Computed as
    transformers does, ``hidden_size ** 0.5``: ``math.sqrt`` differs from it by one ulp for some sizes
    (2921, 3541, …), and the converters compare the multiplier exactly."""
    return hidden_size ** 0.5
