"""Weight rules: which native tensors become which HF tensors, and by which transform.

A :class:`WeightRule` claims full names on both sides and carries the :class:`Transform` between
them. Declarations are lists of rules; a per-layer function declares one layer's rules with names
relative to the layer, and :func:`walk_layers` prefixes them for every layer. The factories below
(:func:`rename`, :func:`split_qkv` …) are thin: each is one ``WeightRule`` with one transform, named
after the HF form it targets.

Rules are the one place where outputs are made to own their storage (:func:`owned`): a transform may
return views; the rule clones an output only when it shares storage with an input or another
output, or is a view of a larger storage. So every output is contiguous and owns exactly its bytes
(what safetensors needs: no shared or partial storages), and by default (``copy=True``) shares
nothing with the inputs (what the ``weight_roundtrip`` property needs). Where clones happen:

- pure renames (``Identity``): one clone per tensor with ``copy=True``, none with ``copy=False``;
- ``Chunk``/``ExpertSplit`` export, ``Concat`` import, ``GroupedQKV`` export of k and v, and
  ``HeadInterleave`` import: the transform returns views, the rule clones each (one copy);
- everything else (rotary permutation, cat/stack, offsets) computes fresh tensors: no extra copy.
- an import that only concatenates (``Chunk``, ``GroupedQKV``, ``ExpertSplit``) can also be had
  unassembled, as its blocks (:meth:`WeightRule.import_blocks`): for the native writer, which
  writes each block at its place (``convert_stream(..., concatenation=...)``).

A clone is not free next to disk I/O: it writes every byte into fresh pages, which costs the same
order as saving or loading the tensor. Hence ``copy=False`` for callers that own their inputs (a
lazy reader producing fresh tensors per key); the property suite keeps ``copy=True``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import torch
from torch import Tensor

from ..errors import ConversionError
from .transforms import (
    Blocks, Chain, Chunk, Concat, ExpertSplit, HeadInterleave, Identity, NormOffset, Parallel, RotaryPermute,
    Transform, qkv_transform,
)

__all__ = [
    "WeightRule", "TiedEmbedding", "owned", "rename", "split_qkv", "fused_qkv", "neox_qkv", "neox_qkv_bias",
    "rotary_rows", "split_gate_up", "norm", "experts", "embedding_and_head", "walk_layers",
    "claimed_names", "export_shapes", "import_shapes", "output_shapes",
]

DIRECTIONS = ("export", "import")
SIDES = ("native", "hf")


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _storage_key(t: Tensor) -> int | None:
    return None if t.device.type == "meta" else t.untyped_storage().data_ptr()


def _owns_storage(t: Tensor) -> bool:
    return (t.is_contiguous() and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def owned(outputs: Sequence[Tensor], inputs: Sequence[Tensor], copy: bool = True, views: bool = False) -> list[Tensor]:
    """Make every output a contiguous tensor owning exactly its storage, shared with no other
    output and (``copy=True``) with no input. Clones only where needed (meta tensors pass through).

    ``copy=False`` lets an output *be* an input that already owns its storage (a pure rename then
    costs nothing): for callers whose inputs are theirs alone, e.g. tensors freshly read from disk.
    ``views=True`` (with ``copy=False``) only makes outputs contiguous: they may be views sharing
    storage with inputs and with each other (for a writer that writes exactly a tensor's bytes)."""
    if views:
        return [t if t.device.type == "meta" or t.is_contiguous() else t.contiguous() for t in outputs]
    taken = {k for k in map(_storage_key, inputs) if k is not None} if copy else set()
    result = []
    for t in outputs:
        if t.device.type != "meta":
            if _storage_key(t) in taken or not _owns_storage(t):
                t = t.clone(memory_format=torch.contiguous_format)
            taken.add(_storage_key(t))
        result.append(t)
    return result


@dataclass(frozen=True)
class WeightRule:
    """``native`` names (native order) ↔ ``hf`` names (HF order) through ``transform``.

    :meth:`export` takes the native tensors in ``native`` order and returns the HF tensors in ``hf``
    order; :meth:`import_` is its exact inverse. Outputs always own their storage (see :func:`owned`).
    """

    native: tuple[str, ...]
    hf: tuple[str, ...]
    transform: Transform = field(default_factory=Identity)

    def __post_init__(self):
        object.__setattr__(self, "native", _names(self.native))
        object.__setattr__(self, "hf", _names(self.hf))
        if self.transform.n_native != len(self.native) or self.transform.n_hf != len(self.hf):
            raise ValueError(f"{self.describe()}: transform {self.transform!r} maps {self.transform.n_native} → "
                             f"{self.transform.n_hf} tensors, the rule names {len(self.native)} → {len(self.hf)}")
        for side in SIDES:
            names = self.claims(side)
            if len(set(names)) != len(names):
                raise ValueError(f"{self.describe()}: a {side} name appears twice")

    def describe(self) -> str:
        return f"{', '.join(self.native) or '(nothing)'} <-> {', '.join(self.hf) or '(nothing)'}"

    # -- the transform, with owned outputs ------------------------------------------------------
    def export(self, tensors: Sequence[Tensor], copy: bool = True) -> list[Tensor]:
        return self._apply("export", list(tensors), copy)

    def import_(self, tensors: Sequence[Tensor], copy: bool = True) -> list[Tensor]:
        return self._apply("import", list(tensors), copy)

    def _apply(self, direction: str, tensors: list[Tensor], copy: bool, views: bool = False) -> list[Tensor]:
        sources = self.sources(direction)
        if len(tensors) != len(sources):
            raise ConversionError(f"{', '.join(sources)}: rule expects {len(sources)} tensors, got {len(tensors)}")
        with torch.no_grad():
            try:
                outputs = self.transform.export(tensors) if direction == "export" else self.transform.import_(tensors)
            except ConversionError as e:
                raise ConversionError(f"{', '.join(sources)}: {e}") from None
            return owned(outputs, tensors, copy, views)

    def run_views(self, direction: str, tensors: Sequence[Tensor]) -> list[Tensor] | None:
        """:meth:`run` with ``copy=False`` whose outputs are contiguous but may be views of the
        inputs and of each other (``fc1``'s gate and up halves, uncloned): for a writer that writes
        each tensor's bytes. None for a rule that overrides :meth:`run` (its ``run`` counts)."""
        if type(self).run is not WeightRule.run:
            return None
        return self._apply(direction, list(tensors), copy=False, views=True)

    def import_blocks(self, tensors: Sequence[Tensor]) -> list[Blocks] | None:
        """The import's outputs as blocks of the (HF) inputs and shapes, when the transform only
        concatenates (:meth:`Transform.import_blocks`); else None. Always None for a rule that
        overrides :meth:`run` (its ``run`` decides what is produced). Blocks may be views of the
        inputs: for callers that own their inputs (``copy=False``)."""
        if type(self).run is not WeightRule.run:
            return None
        sources = self.sources("import")
        if len(tensors) != len(sources):
            raise ConversionError(f"{', '.join(sources)}: rule expects {len(sources)} tensors, got {len(tensors)}")
        with torch.no_grad():
            try:
                return self.transform.import_blocks(list(tensors))
            except ConversionError as e:
                raise ConversionError(f"{', '.join(sources)}: {e}") from None

    # -- the driver's view (see converters.weights.convert_stream) -------------------------------
    def sources(self, direction: str) -> tuple[str, ...]:
        """Names that must be present in the source for ``direction``."""
        return self.native if direction == "export" else self.hf

    def optional_sources(self, direction: str) -> tuple[str, ...]:
        """Names this rule claims in the source but does not require (passed after the required ones)."""
        return ()

    def targets(self, direction: str) -> tuple[str, ...]:
        return self.hf if direction == "export" else self.native

    def claims(self, side: str) -> tuple[str, ...]:
        """Every name the rule claims on ``side`` ("native" or "hf"), optional ones included."""
        return self.native if side == "native" else self.hf

    def run(self, direction: str, tensors: Sequence[Tensor], copy: bool = True) -> list[Tensor]:
        """Required sources then present optional sources, in declaration order → targets."""
        return self._apply(direction, list(tensors), copy)

    def prefixed(self, native_prefix: str, hf_prefix: str) -> "WeightRule":
        return dataclasses.replace(self, native=tuple(native_prefix + n for n in self.native),
                                   hf=tuple(hf_prefix + n for n in self.hf))


@dataclass(frozen=True)
class TiedEmbedding(WeightRule):
    """The embedding of a tied model: native ``embedding`` ↔ HF ``embed_tokens``; HF may also carry
    ``lm_head`` (``head``), which this rule claims optionally on import.

    Export emits no ``lm_head``. Import accepts and drops an ``lm_head`` equal to the embedding
    (shape, dtype and every value) and refuses a different one with ``ConversionError`` naming it.
    One rule, so the comparison needs no second load of the embedding.
    """

    head: str = "lm_head.weight"

    def __post_init__(self):
        super().__post_init__()
        if len(self.native) != 1 or len(self.hf) != 1:
            raise ValueError("TiedEmbedding maps one tensor to one tensor")

    def describe(self) -> str:
        return f"{super().describe()} (tied; {self.head} dropped)"

    def optional_sources(self, direction: str) -> tuple[str, ...]:
        return (self.head,) if direction == "import" else ()

    def claims(self, side: str) -> tuple[str, ...]:
        return self.native if side == "native" else self.hf + (self.head,)

    def run(self, direction: str, tensors: Sequence[Tensor], copy: bool = True) -> list[Tensor]:
        if direction == "import" and len(tensors) == 2:
            embedding, head = tensors
            if not (head.shape == embedding.shape and head.dtype == embedding.dtype and torch.equal(head, embedding)):
                raise ConversionError(
                    f"{self.head}: the model is tied but {self.head} {tuple(head.shape)} {head.dtype} differs from "
                    f"{self.hf[0]} {tuple(embedding.shape)} {embedding.dtype}")
            tensors = [embedding]
        return super().run(direction, tensors, copy)

    def prefixed(self, native_prefix: str, hf_prefix: str) -> "TiedEmbedding":
        rule = super().prefixed(native_prefix, hf_prefix)
        return dataclasses.replace(rule, head=hf_prefix + self.head)


# -------------------------------------------------------------------------------------- factories
def rename(native: str, hf: str) -> WeightRule:
    """One tensor, unchanged (weights, biases, routers, v5 fused experts …)."""
    return WeightRule((native,), (hf,), Identity())


def split_qkv(native: str, hf: Sequence[str], *, heads: int, kv_heads: int, head_dim: int, rotary_dim: int) -> WeightRule:
    """Native grouped interleaved ``qkv`` ↔ HF ``(q_proj, k_proj, v_proj)`` in rotate_half order."""
    return WeightRule((native,), tuple(hf), qkv_transform(heads, kv_heads, head_dim, rotary_dim))


def fused_qkv(native: str, hf: str, *, heads: int, kv_heads: int, head_dim: int, rotary_dim: int) -> WeightRule:
    """Native ``qkv`` ↔ Phi-3 ``qkv_proj`` = ``[q; k; v]`` (rotate_half order)."""
    q, kv = heads * head_dim, kv_heads * head_dim
    return WeightRule((native,), (hf,), Chain((qkv_transform(heads, kv_heads, head_dim, rotary_dim), Concat((q, kv, kv)))))


def neox_qkv(native: str, hf: str, *, heads: int, kv_heads: int, head_dim: int, rotary_dim: int) -> WeightRule:
    """Native ``qkv`` ↔ GPT-NeoX ``query_key_value``: per head ``[q_h; k_h; v_h]``, rotate_half
    order. MHA only: GPT-NeoX has no kv-head count, so ``kv_heads != heads`` is refused."""
    if kv_heads != heads:
        raise ConversionError(f"{native}: GPT-NeoX query_key_value needs kv_heads == heads, got kv_heads={kv_heads}, heads={heads}")
    return WeightRule((native,), (hf,), Chain((qkv_transform(heads, heads, head_dim, rotary_dim), HeadInterleave(heads, head_dim, 3))))


def neox_qkv_bias(native: Sequence[str], hf: str, *, heads: int, head_dim: int, rotary_dim: int) -> WeightRule:
    """Native ``(q_bias, k_bias, v_bias)`` ↔ GPT-NeoX ``query_key_value.bias`` (per head interleaved)."""
    rot = RotaryPermute(heads, head_dim, rotary_dim)
    return WeightRule(tuple(native), (hf,), Chain((Parallel((rot, rot, Identity())), HeadInterleave(heads, head_dim, 3))))


def rotary_rows(native: str, hf: str, *, heads: int, head_dim: int, rotary_dim: int, offset: float = 0.0) -> WeightRule:
    """A q/k vector or weight in rotary row order: q/k bias (``heads`` / ``kv_heads``), per-head q/k
    norm (``heads=1``), full-projection q/k norm (the projection's heads). ``offset`` as :func:`norm`."""
    permute = RotaryPermute(heads, head_dim, rotary_dim)
    return WeightRule((native,), (hf,), Chain((permute, NormOffset(offset))) if offset else permute)


def split_gate_up(native: str, hf: Sequence[str]) -> WeightRule:
    """Native ``fc1 = [gate; up]`` (weight or bias) ↔ HF ``(gate_proj, up_proj)``. (Phi-3's
    ``gate_up_proj`` is the native layout already: use :func:`rename`.)"""
    return WeightRule((native,), tuple(hf), Chunk(2, 0))


def norm(native: str, hf: str, *, offset: float = 0.0, strict: bool = False) -> WeightRule:
    """A norm weight; ``offset=1`` for HF formats storing ``multiplier - 1`` (Gemma). See
    :class:`NormOffset` for when that is bit-exact."""
    return WeightRule((native,), (hf,), NormOffset(offset, strict) if offset or strict else Identity())


def experts(native_fc1: str, native_fc2: str, *, experts: int, fc1: Sequence[str] | str, fc2: str) -> list[WeightRule]:
    """Stacked native experts ↔ per-expert HF tensors. ``fc1`` is one template (HF keeps each
    expert's ``[gate; up]`` fused) or two (gate, up), ``fc2`` one; templates contain ``{e}``.
    Mixtral: ``fc1=("…experts.{e}.w1.weight", "…experts.{e}.w3.weight"), fc2="…experts.{e}.w2.weight"``.
    (transformers v5 models hold fused ``experts.gate_up_proj`` / ``experts.down_proj`` in the native
    layout: declare those with :func:`rename`.)"""
    fc1 = _names(fc1)
    return [
        WeightRule((native_fc1,), tuple(t.format(e=e) for e in range(experts) for t in fc1), ExpertSplit(experts, len(fc1))),
        WeightRule((native_fc2,), tuple(fc2.format(e=e) for e in range(experts)), ExpertSplit(experts, 1)),
    ]


def embedding_and_head(tied: bool, *, native_embedding: str = "embedding.weight", hf_embedding: str = "model.embed_tokens.weight",
                       native_output: str = "output.weight", hf_output: str = "lm_head.weight") -> list[WeightRule]:
    """Untied: two renames (a missing ``lm_head`` is then a missing tensor). Tied: one
    :class:`TiedEmbedding` (no native output; an HF ``lm_head`` must equal the embedding)."""
    if tied:
        return [TiedEmbedding((native_embedding,), (hf_embedding,), Identity(), head=hf_output)]
    return [rename(native_embedding, hf_embedding), rename(native_output, hf_output)]


T = TypeVar("T")


def walk_layers(layers: Iterable[T], layer_rules: Callable[[int, T], Iterable[WeightRule]], *,
                native_prefix: str = "layers.{i}.", hf_prefix: str = "model.layers.{i}.") -> list[WeightRule]:
    """Rules for every layer: ``layer_rules(i, layer)`` declares layer ``i`` with names relative to
    the layer; they are prefixed with ``native_prefix`` / ``hf_prefix`` formatted with ``i``."""
    return [rule.prefixed(native_prefix.format(i=i), hf_prefix.format(i=i))
            for i, layer in enumerate(layers) for rule in layer_rules(i, layer)]


# ------------------------------------------------------------------------------ coverage, shapes
def claimed_names(rules: Iterable[WeightRule], side: str) -> list[str]:
    """Every name claimed on ``side`` ("native" or "hf"), in rule order, optional ones included."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return [name for rule in rules for name in rule.claims(side)]


def output_shapes(rules: Iterable[WeightRule], shapes: Mapping[str, Sequence[int]], direction: str) -> dict[str, tuple[int, ...]]:
    """Target name → shape, by running each rule on ``meta`` tensors of the source shapes (required
    sources only: a tied ``lm_head`` is not produced). Raises ``ConversionError`` naming a source
    without a shape, or one a transform rejects."""
    out: dict[str, tuple[int, ...]] = {}
    for rule in rules:
        tensors = []
        for name in rule.sources(direction):
            if name not in shapes:
                raise ConversionError(f"{name}: no shape given for it ({rule.describe()})")
            tensors.append(torch.empty(tuple(shapes[name]), device="meta"))
        for name, t in zip(rule.targets(direction), rule.run(direction, tensors)):
            out[name] = tuple(t.shape)
    return out


def export_shapes(rules: Iterable[WeightRule], native_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """HF name → shape, derived from the native shapes (``native.state_shapes(cfg)``)."""
    return output_shapes(rules, native_shapes, "export")


def import_shapes(rules: Iterable[WeightRule], hf_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Native name → shape, derived from the HF shapes."""
    return output_shapes(rules, hf_shapes, "import")
