"""Weight transforms: small pure functions on lists of tensors, each with its exact inverse beside it.

A :class:`Transform` maps ``n_native`` tensors in native order to ``n_hf`` tensors in HF order
(:meth:`Transform.export`) and back (:meth:`Transform.import_`). Every transform acts on dim 0 (the
output rows of a linear weight, or a bias / norm vector) unless it says otherwise, so one transform
serves weights, biases and norm weights alike. Transforms compose: :class:`Chain` runs steps in
sequence, :class:`Parallel` runs one step per input group.

Every transform carries every parameter it needs (heads, kv_heads, head_dim, rotary_dim …); none
reads a config. (transformers' ``PermuteForRope`` reads the head count from the config and gets
``k_proj`` wrong under GQA; here the k permutation is declared with ``kv_heads`` explicitly.)

Transforms are shape-generic and device-generic: they only reshape, slice, transpose and
concatenate, so they run on ``device="meta"`` tensors too (that is how HF shapes are derived, see
:func:`converters.weights.export_shapes`). They may return views of their inputs; the rule that
runs them (:class:`converters.weights.WeightRule`) makes every output own its storage.

A transform refuses a tensor of the wrong shape with :class:`ConversionError`; the rule running it
prefixes the tensor names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConversionError

__all__ = [
    "Transform", "Identity", "Chain", "Parallel", "Chunk", "Concat", "GroupedQKV", "RotaryPermute",
    "HeadInterleave", "NormOffset", "ExpertSplit", "qkv_transform", "exact_offset_range",
]


def _rows(x: Tensor, expected: int, what: str) -> None:
    if x.dim() < 1 or x.shape[0] != expected:
        raise ConversionError(f"{what}: expected {expected} rows (dim 0), got shape {tuple(x.shape)}")


Blocks = tuple[list[Tensor], tuple[int, ...]]  # an output as its blocks and its shape (Transform.import_blocks)


def _count(xs: Sequence[Tensor], n: int, what: str) -> None:
    if len(xs) != n:
        raise ConversionError(f"{what}: expected {n} tensors, got {len(xs)}")


def _count_equal_shapes(xs: Sequence[Tensor], n: int, what: str) -> None:
    """``n`` tensors of one shape (the parts a single tensor is assembled from)."""
    _count(xs, n, what)
    if len({tuple(x.shape) for x in xs}) != 1:
        raise ConversionError(f"{what}: the {n} parts differ in shape: {[tuple(x.shape) for x in xs]}")


class Transform:
    """Base class. Subclasses are frozen dataclasses and define ``n_native``, ``n_hf``,
    :meth:`export` (native order → HF order) and :meth:`import_` (HF → native), exact inverses."""

    n_native: int = 1
    n_hf: int = 1

    def export(self, xs: Sequence[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def import_(self, xs: Sequence[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def import_blocks(self, xs: Sequence[Tensor]) -> list[Blocks] | None:
        """:meth:`import_` with each output given as the blocks it is made of, when the import only
        concatenates (views of) its inputs; None when it computes anything else (the default).

        An output ``(blocks, shape)`` is ``torch.cat([b.reshape(-1) for b in blocks]).view(shape)``:
        a writer can write each block at its place instead of assembling the output in fresh
        memory (see ``checkpoints.native_format.Concatenation``). Same refusals as :meth:`import_`."""
        return None


# -------------------------------------------------------------------------------------- plumbing
@dataclass(frozen=True)
class Identity(Transform):
    """``n`` tensors unchanged (a rename, when the rule's names differ)."""

    n: int = 1

    @property
    def n_native(self) -> int:
        return self.n

    @property
    def n_hf(self) -> int:
        return self.n

    def export(self, xs):
        _count(xs, self.n, "identity")
        return list(xs)

    def import_(self, xs):
        _count(xs, self.n, "identity")
        return list(xs)


@dataclass(frozen=True)
class Chain(Transform):
    """Steps applied in order on export, and their inverses in reverse order on import."""

    steps: tuple[Transform, ...]

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise ValueError("Chain needs at least one step")
        for a, b in zip(self.steps, self.steps[1:]):
            if a.n_hf != b.n_native:
                raise ValueError(f"Chain: {a!r} yields {a.n_hf} tensors but {b!r} takes {b.n_native}")

    @property
    def n_native(self) -> int:
        return self.steps[0].n_native

    @property
    def n_hf(self) -> int:
        return self.steps[-1].n_hf

    def export(self, xs):
        for step in self.steps:
            xs = step.export(xs)
        return list(xs)

    def import_(self, xs):
        for step in reversed(self.steps):
            xs = step.import_(xs)
        return list(xs)

    def import_blocks(self, xs):
        """Blocks when the step run last on import (``steps[0]``) only concatenates."""
        last = self.steps[0]
        if type(last).import_blocks is Transform.import_blocks:
            return None  # it never gives blocks: the other steps need not run for nothing
        for step in reversed(self.steps[1:]):
            xs = step.import_(xs)
        return last.import_blocks(list(xs))


@dataclass(frozen=True)
class Parallel(Transform):
    """One transform per consecutive group of inputs: ``parts[0]`` takes the first
    ``parts[0].n_native`` tensors, and so on; outputs are concatenated in the same order."""

    parts: tuple[Transform, ...]

    def __post_init__(self):
        object.__setattr__(self, "parts", tuple(self.parts))

    @property
    def n_native(self) -> int:
        return sum(p.n_native for p in self.parts)

    @property
    def n_hf(self) -> int:
        return sum(p.n_hf for p in self.parts)

    def _run(self, xs, side: str, method: str) -> list[Tensor]:
        out, at = [], 0
        for part in self.parts:
            n = getattr(part, side)
            out.extend(getattr(part, method)(xs[at:at + n]))
            at += n
        return out

    def export(self, xs):
        _count(xs, self.n_native, "parallel")
        return self._run(list(xs), "n_native", "export")

    def import_(self, xs):
        _count(xs, self.n_hf, "parallel")
        return self._run(list(xs), "n_hf", "import_")


# ---------------------------------------------------------------------------------- split / cat
@dataclass(frozen=True)
class Chunk(Transform):
    """One native tensor ↔ ``parts`` equal HF chunks along ``dim``: ``fc1 = [gate; up]`` ↔
    ``gate_proj``, ``up_proj`` (weight or bias)."""

    parts: int = 2
    dim: int = 0

    @property
    def n_hf(self) -> int:
        return self.parts

    def export(self, xs):
        _count(xs, 1, "chunk")
        (x,) = xs
        if x.dim() <= self.dim or x.shape[self.dim] % self.parts:
            raise ConversionError(f"chunk: dim {self.dim} of shape {tuple(x.shape)} does not split into {self.parts} equal parts")
        return list(x.chunk(self.parts, dim=self.dim))


    def import_(self, xs):
        _count_equal_shapes(xs, self.parts, "chunk")
        return [torch.cat(list(xs), dim=self.dim)]

    def import_blocks(self, xs):
        """Along dim 0 the parts, whole, are the blocks."""
        if self.dim != 0:
            return None
        _count_equal_shapes(xs, self.parts, "chunk")
        return [(list(xs), (self.parts * xs[0].shape[0], *xs[0].shape[1:]))]


@dataclass(frozen=True)
class Concat(Transform):
    """``len(sizes)`` native tensors ↔ one HF tensor, concatenated along ``dim``; ``sizes`` are the
    parts' extents on ``dim`` (so the inverse split is exact). Phi-3 ``qkv_proj = [q; k; v]``."""

    sizes: tuple[int, ...]
    dim: int = 0

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(self.sizes))

    @property
    def n_native(self) -> int:
        return len(self.sizes)

    def export(self, xs):
        _count(xs, len(self.sizes), "concat")
        for i, (x, size) in enumerate(zip(xs, self.sizes)):
            if x.dim() <= self.dim or x.shape[self.dim] != size:
                raise ConversionError(f"concat: part {i} has shape {tuple(x.shape)}, expected {size} on dim {self.dim}")
        return [torch.cat(list(xs), dim=self.dim)]

    def import_(self, xs):
        _count(xs, 1, "concat")
        (x,) = xs
        if x.dim() <= self.dim or x.shape[self.dim] != sum(self.sizes):
            raise ConversionError(f"concat: shape {tuple(x.shape)} does not have {sum(self.sizes)} on dim {self.dim}")
        return list(x.split(list(self.sizes), dim=self.dim))


# ------------------------------------------------------------------------------------ attention
@dataclass(frozen=True)
class GroupedQKV(Transform):
    """Native fused ``qkv`` grouped per KV head ↔ separate HF ``q``, ``k``, ``v``.

    Native rows: for each kv group ``g`` in ``range(kv_heads)``: ``[q heads g*group … (g+1)*group-1;
    k_g; v_g]``, each head ``head_dim`` rows (``group = heads // kv_heads``). HF: ``q`` = all q heads
    in order (head ``h`` attends with kv head ``h // group``, as ``repeat_kv`` does), ``k``, ``v``.
    Trailing dims are carried along (weights and biases alike).
    """

    heads: int
    kv_heads: int
    head_dim: int

    n_hf = 3

    def __post_init__(self):
        if self.heads <= 0 or self.kv_heads <= 0 or self.head_dim <= 0 or self.heads % self.kv_heads:
            raise ValueError(f"GroupedQKV: kv_heads={self.kv_heads} must divide heads={self.heads} (head_dim={self.head_dim})")

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def export(self, xs):
        _count(xs, 1, "qkv")
        (x,) = xs
        kv, g, d = self.kv_heads, self.group, self.head_dim
        _rows(x, (self.heads + 2 * kv) * d, "qkv")
        rest = x.shape[1:]
        y = x.reshape(kv, g + 2, d, *rest)
        q = y[:, :g].reshape(self.heads * d, *rest)
        return [q, y[:, g].reshape(kv * d, *rest), y[:, g + 1].reshape(kv * d, *rest)]

    def _check_qkv(self, xs) -> tuple[Tensor, Tensor, Tensor]:
        _count(xs, 3, "qkv")
        q, k, v = xs
        _rows(q, self.heads * self.head_dim, "q")
        _rows(k, self.kv_heads * self.head_dim, "k")
        _rows(v, self.kv_heads * self.head_dim, "v")
        if k.shape[1:] != q.shape[1:] or v.shape[1:] != q.shape[1:]:
            raise ConversionError(f"qkv: q, k, v shapes disagree: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        return q, k, v

    def import_(self, xs):
        q, k, v = self._check_qkv(xs)
        kv, g, d = self.kv_heads, self.group, self.head_dim
        rest = q.shape[1:]
        y = torch.cat([q.reshape(kv, g, d, *rest), k.reshape(kv, 1, d, *rest), v.reshape(kv, 1, d, *rest)], dim=1)
        return [y.reshape((self.heads + 2 * kv) * d, *rest)]

    def import_blocks(self, xs):
        """Per kv group: its q heads' rows, then its k rows, then its v rows."""
        q, k, v = self._check_qkv(xs)
        q_rows, kv_rows = self.group * self.head_dim, self.head_dim
        blocks = []
        for g in range(self.kv_heads):
            blocks += [q[g * q_rows:(g + 1) * q_rows], k[g * kv_rows:(g + 1) * kv_rows], v[g * kv_rows:(g + 1) * kv_rows]]
        return [(blocks, ((self.heads + 2 * self.kv_heads) * self.head_dim, *q.shape[1:]))]


@dataclass(frozen=True)
class RotaryPermute(Transform):
    """Per-head row permutation of the rotary part: native interleaved pairs ↔ HF half-split.

    Rows are ``heads`` blocks of ``head_dim``. Within the first ``rotary_dim`` rows of each head,
    native pair ``j`` is rows ``(2j, 2j+1)``; HF (``rotate_half``) pairs rows ``(j, j + rotary_dim/2)``.
    So ``hf[j] = native[2j]`` and ``hf[rotary_dim/2 + j] = native[2j+1]``; rows ``rotary_dim …
    head_dim-1`` (partial rotary's pass-through part) are untouched. ``rotary_dim = 0`` is the identity.

    Apply with ``heads`` to q (weight or bias), with ``kv_heads`` to k; to a per-head q/k norm
    weight of shape ``(head_dim,)`` with ``heads=1``; to a full-projection norm weight with the
    projection's head count.
    """

    heads: int
    head_dim: int
    rotary_dim: int

    def __post_init__(self):
        if self.heads <= 0 or self.head_dim <= 0 or self.rotary_dim < 0 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(f"RotaryPermute: rotary_dim={self.rotary_dim} must be even and within head_dim={self.head_dim} (heads={self.heads})")

    def _permute(self, x: Tensor, to_hf: bool) -> Tensor:
        h, d, r = self.heads, self.head_dim, self.rotary_dim
        _rows(x, h * d, "rotary")
        if r == 0:
            return x
        rest = x.shape[1:]
        y = x.reshape(h, d, *rest)
        # interleaved (r/2, 2) <-> half-split (2, r/2): a transpose of the two pair axes, written
        # straight into the output (one copy; the pass-through rows r..d-1 copied beside it)
        pairs = (r // 2, 2) if to_hf else (2, r // 2)
        out = torch.empty_like(y, memory_format=torch.contiguous_format)
        out[:, :r].unflatten(1, pairs[::-1]).copy_(y[:, :r].unflatten(1, pairs).transpose(1, 2))
        out[:, r:].copy_(y[:, r:])
        return out.reshape(h * d, *rest)

    def export(self, xs):
        _count(xs, 1, "rotary")
        return [self._permute(xs[0], to_hf=True)]

    def import_(self, xs):
        _count(xs, 1, "rotary")
        return [self._permute(xs[0], to_hf=False)]


@dataclass(frozen=True)
class HeadInterleave(Transform):
    """``parts`` tensors of ``heads`` heads each ↔ one tensor with the parts interleaved per head:
    rows ``[p0_h; p1_h; …]`` for each head ``h``. GPT-NeoX ``query_key_value`` (``parts=3``: q, k, v
    in HF order, MHA only) — its forward views the output as ``(heads, 3 * head_dim)``."""

    heads: int
    head_dim: int
    parts: int = 3

    @property
    def n_native(self) -> int:
        return self.parts

    def export(self, xs):
        _count(xs, self.parts, "head interleave")
        h, d = self.heads, self.head_dim
        for i, x in enumerate(xs):
            _rows(x, h * d, f"head interleave part {i}")
        rest = xs[0].shape[1:]
        if any(x.shape[1:] != rest for x in xs):
            raise ConversionError(f"head interleave: part shapes disagree: {[tuple(x.shape) for x in xs]}")
        y = torch.stack([x.reshape(h, d, *rest) for x in xs], dim=1)  # (h, parts, d, ...)
        return [y.reshape(h * self.parts * d, *rest)]

    def import_(self, xs):
        _count(xs, 1, "head interleave")
        (x,) = xs
        h, d = self.heads, self.head_dim
        _rows(x, h * self.parts * d, "head interleave")
        rest = x.shape[1:]
        y = x.reshape(h, self.parts, d, *rest)
        return [y[:, i].reshape(h * d, *rest) for i in range(self.parts)]


# ----------------------------------------------------------------------------------------- norms
def exact_offset_range(dtype: torch.dtype) -> tuple[float, float]:
    """The interval ``[0.5, 2**p]`` (``p`` = significand bits of ``dtype``, implicit bit included)
    on which ``(x - 1) + 1 == x`` holds for **every** value of ``dtype`` (Sterbenz below 2; above 2
    ``x - 1`` stays on ``x``'s grid until the grid spacing exceeds 1). Outside it the round trip is
    exact iff ``x - 1`` is representable, e.g. for ``x`` in ``(0, 0.5)`` iff ``x`` is a multiple of
    ``2**-p``. Verified exhaustively for bf16/fp16 and for fp32 on ``[0.5, 2**24]``."""
    p = significand_bits(dtype)
    return 0.5, float(2 ** p)


def significand_bits(dtype: torch.dtype) -> int:
    """Precision ``p`` of a float dtype, implicit bit included (8 bf16, 11 fp16, 24 fp32, 53 fp64)."""
    return 1 - int(math.log2(torch.finfo(dtype).eps))


@dataclass(frozen=True)
class NormOffset(Transform):
    """Native multiplier ``x`` ↔ HF stored ``x - offset``. Not a byte bijection: no registered
    converter uses it (Gemma's zero-centred norms are renamed as they are, the native schema says
    ``zero_centered``); it stays for a format that cannot avoid it, with ``strict=True``, and as
    the lossy transform the round-trip meta-tests must reject.

    Export computes ``x - offset`` and import ``w + offset``, both in the tensor's dtype.
    Exactness (``offset=1``; see :func:`exact_offset_range`):

    - native → HF → native is bit-exact iff ``x - 1`` is representable: for every ``x`` in
      ``[0.5, 2**p]`` (p = 8 bf16, 11 fp16, 24 fp32, 53 fp64), never for most ``x`` below 0.5.
    - HF → native → HF is bit-exact iff ``w + 1`` is representable: for every ``w`` in ``[-2, -0.5]``
      and for ``w`` on the grid of ``1 + w`` otherwise. A *small* stored ``w`` (real Gemma
      checkpoints, or ``w`` drawn near 0) is generally **not** exact in bf16/fp32: ``1 + w`` rounds.
      HF states drawn by exporting a native state are exact.

    ``strict=True`` refuses (``ConversionError``) a tensor whose value would not survive the round
    trip back, in either direction, instead of rounding silently.
    """

    offset: float = 1.0
    strict: bool = False

    def _shift(self, x: Tensor, sign: int) -> Tensor:
        y = x - self.offset if sign < 0 else x + self.offset
        if self.strict and x.device.type != "meta":
            back = y + self.offset if sign < 0 else y - self.offset
            bad = back != x
            if bool(bad.any()):
                first = x[bad].flatten()[0].item()
                raise ConversionError(
                    f"norm offset: {int(bad.sum())} value(s) do not survive {'x - ' if sign < 0 else 'w + '}{self.offset} "
                    f"exactly in {x.dtype} (first: {first!r}; exact for x in {exact_offset_range(x.dtype)})")
        return y

    def export(self, xs):
        _count(xs, 1, "norm offset")
        return [self._shift(xs[0], -1)]

    def import_(self, xs):
        _count(xs, 1, "norm offset")
        return [self._shift(xs[0], +1)]


# ------------------------------------------------------------------------------------------- MoE
@dataclass(frozen=True)
class ExpertSplit(Transform):
    """Native stacked experts ``(E, rows, cols)`` ↔ ``E * parts`` per-expert HF tensors, expert-major:
    ``[e0 part0, e0 part1, …, e1 part0, …]``, each expert's rows chunked into ``parts`` (``parts=2``
    for ``fc1 = [gate; up]`` ↔ Mixtral ``w1``/``w3`` or Qwen2-MoE ``gate_proj``/``up_proj``;
    ``parts=1`` for ``fc2`` ↔ ``w2``/``down_proj``)."""

    experts: int
    parts: int = 1

    @property
    def n_hf(self) -> int:
        return self.experts * self.parts

    def export(self, xs):
        _count(xs, 1, "experts")
        (x,) = xs
        if x.dim() < 2 or x.shape[0] != self.experts or x.shape[1] % self.parts:
            raise ConversionError(f"experts: shape {tuple(x.shape)} is not ({self.experts}, rows divisible by {self.parts}, …)")
        return [part for expert in x.unbind(0) for part in expert.chunk(self.parts, dim=0)]


    def import_blocks(self, xs):
        """The per-expert tensors, in order, are the stack's blocks."""
        _count_equal_shapes(xs, self.n_hf, "experts")
        if xs[0].dim() == 0:
            return None
        return [(list(xs), (self.experts, self.parts * xs[0].shape[0], *xs[0].shape[1:]))]

    def import_(self, xs):
        _count_equal_shapes(xs, self.n_hf, "experts")
        p = self.parts
        per_expert = [torch.cat(list(xs[e * p:(e + 1) * p]), dim=0) if p > 1 else xs[e] for e in range(self.experts)]
        return [torch.stack(per_expert, dim=0)]


# ---------------------------------------------------------------------------------- compositions
def qkv_transform(heads: int, kv_heads: int, head_dim: int, rotary_dim: int) -> Chain:
    """Native grouped, interleaved ``qkv`` → HF ``q``, ``k``, ``v`` in ``rotate_half`` order: the
    group split, then the rotary permutation of q with ``heads`` and of k with ``kv_heads``."""
    return Chain((
        GroupedQKV(heads, kv_heads, head_dim),
        Parallel((RotaryPermute(heads, head_dim, rotary_dim), RotaryPermute(kv_heads, head_dim, rotary_dim), Identity())),
    ))
