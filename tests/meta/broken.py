"""Deliberately broken converters: each is a real converter with one bug that real converters have
shipped. The meta-tests (test_broken_converters.py) require the property named beside each bug to
reject it within the gate profile's budget; a property that lets one through is too weak.

Each class subclasses the real converter (same ``model_type``, so the same strategies draw its
inputs) and changes one thing: a weight rule's transform, the exported config dict, or the
tensors streamed out.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from converters.llama import LlamaConverter
from converters.mistral import MistralConverter
from converters.weights import Chain, Chunk, ExpertSplit, GroupedQKV, Identity, NormOffset, Parallel, RotaryPermute
from converters.weights.transforms import Transform


# ------------------------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class Reorder(Transform):
    """``n`` tensors put in ``order`` on export (``out[k] = in[order[k]]``), and back on import: a
    bijection, so weight round trips stay exact while the HF side is wrong."""

    order: tuple[int, ...]

    @property
    def n_native(self) -> int:
        return len(self.order)

    @property
    def n_hf(self) -> int:
        return len(self.order)

    def export(self, xs):
        return [xs[i] for i in self.order]

    def import_(self, xs):
        out = [None] * len(self.order)
        for k, i in enumerate(self.order):
            out[i] = xs[k]
        return out


def swap(n: int, i: int, j: int) -> Reorder:
    order = list(range(n))
    order[i], order[j] = order[j], order[i]
    return Reorder(tuple(order))


def map_transforms(rules, fn: Callable[[Transform], Transform]):
    """Rules with ``fn`` applied to every transform, recursively into Chain and Parallel."""
    def walk(t: Transform) -> Transform:
        if isinstance(t, Chain):
            t = Chain(tuple(walk(s) for s in t.steps))
        elif isinstance(t, Parallel):
            t = Parallel(tuple(walk(p) for p in t.parts))
        return fn(t)

    return [dataclasses.replace(rule, transform=walk(rule.transform)) for rule in rules]


def is_qkv_split(t: Transform) -> bool:
    return isinstance(t, Chain) and isinstance(t.steps[0], GroupedQKV)


# ------------------------------------------------------------------------- weight-rule bugs
class QKPermutationSkipped(LlamaConverter):
    """q/k rows exported in the native interleaved rotary order (no rotate_half permutation)."""

    def weight_rules(self, cfg):
        return map_transforms(super().weight_rules(cfg),
                              lambda t: Identity() if isinstance(t, RotaryPermute) else t)


class KVSwapped(LlamaConverter):
    """k_proj and v_proj exchanged on export (and back on import: round trips stay exact)."""

    def weight_rules(self, cfg):
        return map_transforms(super().weight_rules(cfg),
                              lambda t: Chain((t, swap(3, 1, 2))) if is_qkv_split(t) else t)


class GateUpSwapped(LlamaConverter):
    """gate_proj and up_proj exchanged (native ``fc1 = [gate; up]`` read as ``[up; gate]``)."""

    def weight_rules(self, cfg):
        return map_transforms(super().weight_rules(cfg),
                              lambda t: Chain((t, swap(2, 0, 1))) if isinstance(t, Chunk) else t)


def _with_norm_offset(rules):
    """Every norm weight rule followed by Gemma's old ``multiplier - 1`` offset."""
    return [dataclasses.replace(r, transform=Chain((r.transform, NormOffset(1.0))))
            if all(n.endswith("norm.weight") for n in r.native) else r for r in rules]


def norm_offset_added(base: type) -> type:
    """A Gemma-family converter that still subtracts 1 from the norm weights on export (and adds it
    on import) although the native norm is zero-centred already: HF applies ``1 + (w - 1)``."""

    class NormOffsetAdded(base):
        def weight_rules(self, cfg):
            return _with_norm_offset(super().weight_rules(cfg))

    NormOffsetAdded.__qualname__ = NormOffsetAdded.__name__ = f"NormOffsetAdded[{base.__name__}]"
    return NormOffsetAdded


def gain_stored(base: type) -> type:
    """The Gemma layout before norms were zero-centred: the native norm holds the gain ``1 + w`` in
    the checkpoint's dtype and the converter adds or subtracts 1. Exact for every HF state that is
    the export of a native one (gains in [0.5, 2] survive ``- 1``), lossy on HF's own small ``w``:
    ``1 + w`` rounds. Only round trips from the source bytes see it."""

    class GainStored(base):
        norm_zero_centered = False

        def weight_rules(self, cfg):
            return _with_norm_offset(super().weight_rules(cfg))

    GainStored.__qualname__ = GainStored.__name__ = f"GainStored[{base.__name__}]"
    return GainStored


def expert_order_reversed(base: type) -> type:
    """A per-expert MoE converter writing the experts in reverse order (the router untouched)."""

    def reverse(t: Transform) -> Transform:
        if not isinstance(t, ExpertSplit):
            return t
        order = tuple((t.experts - 1 - e) * t.parts + p for e in range(t.experts) for p in range(t.parts))
        return Chain((t, Reorder(order)))

    class ExpertOrderReversed(base):
        def weight_rules(self, cfg):
            return map_transforms(super().weight_rules(cfg), reverse)

    ExpertOrderReversed.__qualname__ = ExpertOrderReversed.__name__ = f"ExpertOrderReversed[{base.__name__}]"
    return ExpertOrderReversed


@dataclass(frozen=True)
class RowsReversed(Transform):
    """One tensor's rows in reverse order on export, and back on import."""

    @property
    def n_native(self) -> int:
        return 1

    @property
    def n_hf(self) -> int:
        return 1

    def export(self, xs):
        return [xs[0].flip(0)]

    def import_(self, xs):
        return [xs[0].flip(0)]


def router_rows_reversed(base: type) -> type:
    """An MoE converter writing the router's rows (one per expert) in reverse order, the experts
    untouched: HF routes every token to the mirrored expert."""

    class RouterRowsReversed(base):
        def weight_rules(self, cfg):
            return [dataclasses.replace(r, transform=Chain((r.transform, RowsReversed())))
                    if any(n.endswith("router.weight") for n in r.native) else r for r in super().weight_rules(cfg)]

    RouterRowsReversed.__qualname__ = RouterRowsReversed.__name__ = f"RouterRowsReversed[{base.__name__}]"
    return RouterRowsReversed


# ---------------------------------------------------------------------------- stream bugs
class BiasDropped(LlamaConverter):
    """The o_proj bias is not written (the config still says ``attention_bias: true``)."""

    def export_weights(self, cfg, state):
        return ((n, t) for n, t in super().export_weights(cfg, state) if not n.endswith("o_proj.bias"))


class LmHeadExportedWhileTied(LlamaConverter):
    """A tied model exported with an ``lm_head.weight`` copy of the embedding."""

    def export_weights(self, cfg, state):
        for name, tensor in super().export_weights(cfg, state):
            yield name, tensor
            if cfg.head.tied and name == "model.embed_tokens.weight":
                yield "lm_head.weight", tensor.clone()


class ExportUpcasts(LlamaConverter):
    """Every exported tensor cast to float32 (a bf16 checkpoint comes out twice as large)."""

    def export_weights(self, cfg, state):
        return ((n, t.float()) for n, t in super().export_weights(cfg, state))


@dataclass(frozen=True)
class UpcastOnImport(Transform):
    """``inner``, with its import outputs cast to float32."""

    inner: Transform

    @property
    def n_native(self) -> int:
        return self.inner.n_native

    @property
    def n_hf(self) -> int:
        return self.inner.n_hf

    def export(self, xs):
        return self.inner.export(xs)

    def import_(self, xs):
        return [x.float() for x in self.inner.import_(xs)]


class ImportUpcasts(LlamaConverter):
    """Every imported tensor cast to float32 (in the weight rules, which ``convcheck convert``
    streams through)."""

    def weight_rules(self, cfg):
        return [dataclasses.replace(rule, transform=UpcastOnImport(rule.transform))
                for rule in super().weight_rules(cfg)]


# ------------------------------------------------------------------------------ config bugs
class KeyNotWritten(LlamaConverter):
    """The HF key ``key`` left out of every export."""

    key: ClassVar[str] = ""

    def export_config(self, cfg):
        hf = super().export_config(cfg)
        hf.pop(self.key, None)
        return hf


class TieFlagLost(KeyNotWritten):
    """``tie_word_embeddings`` not written (LlamaConfig then unties, and the head is missing)."""

    key = "tie_word_embeddings"


class RopeThetaDropped(LlamaConverter):
    """``rope_theta`` not written (transformers falls back to 10000)."""

    def export_config(self, cfg):
        hf = super().export_config(cfg)
        hf.get("rope_parameters", {}).pop("rope_theta", None)
        return hf


class RopeScalingDropped(LlamaConverter):
    """A v4 config's ``rope_scaling`` ignored on import (plain RoPE assumed)."""

    def import_config(self, hf):
        return super().import_config({k: v for k, v in hf.items() if k != "rope_scaling"})


class PlainRopeFactor(LlamaConverter):
    """``factor: 1.0`` written into the rope parameters of plain RoPE (transformers warns: an
    unrecognized key)."""

    def export_config(self, cfg):
        hf = super().export_config(cfg)
        rope = hf.get("rope_parameters", {})
        if rope.get("rope_type") == "default":
            rope["factor"] = 1.0
        return hf


class HeadDimDropped(KeyNotWritten):
    """``head_dim`` not written (transformers then derives ``hidden_size // num_attention_heads``)."""

    key = "head_dim"


class WindowIgnored(LlamaConverter):
    """The declaration forgets ``attention.window``: a windowed model exports as full attention."""

    def layer_section(self):
        section = dict(super().layer_section())
        section.pop("window")
        return section


class SlidingWindowDropped(MistralConverter):
    """``sliding_window`` written as null (full attention) whatever the native window."""

    def export_config(self, cfg):
        return {**super().export_config(cfg), "sliding_window": None}


__all__ = [
    "Reorder", "swap", "map_transforms", "QKPermutationSkipped", "KVSwapped", "GateUpSwapped",
    "norm_offset_added", "gain_stored", "expert_order_reversed", "router_rows_reversed", "BiasDropped", "LmHeadExportedWhileTied", "ExportUpcasts",
    "ImportUpcasts", "TieFlagLost", "RopeThetaDropped", "RopeScalingDropped", "PlainRopeFactor", "HeadDimDropped",
    "WindowIgnored", "SlidingWindowDropped",
]


# ----------------------------------------------------------------------------- DeepSeek (MLA, MoE)
def _deepseek_v3():
    from converters.deepseek_v3 import DeepseekV3Converter

    return DeepseekV3Converter


def rotary_on_nope(base: type | None = None) -> type:
    """The rotary permutation of a half-split HF layout applied to the *first* ``qk_rope_head_dim``
    rows of each query head (the nope part, as for Llama's partial rotary) instead of the last."""
    from converters.deepseek import TailRotaryPermute

    base = base or _deepseek_v3()

    class RotaryOnNope(base):
        def weight_rules(self, cfg):
            def wrong(t):
                if isinstance(t, TailRotaryPermute):
                    return RotaryPermute(t.heads, t.head_dim, t.rotary_dim)
                return t

            return map_transforms(super().weight_rules(cfg), wrong)

    return RotaryOnNope


class Zeroed(Transform):
    """Export writes zeros of the right shape (what transformers initialises the tensor to); import
    gives zeros back: a silent drop."""

    def export(self, xs):
        return [torch.zeros_like(xs[0])]

    def import_(self, xs):
        return [torch.zeros_like(xs[0])]


class Ones(Zeroed):
    def export(self, xs):
        return [torch.ones_like(xs[0])]

    def import_(self, xs):
        return [torch.ones_like(xs[0])]


def _replace_rules(base: type, suffix: str, transform: Transform) -> type:
    class Broken(base):
        def weight_rules(self, cfg):
            return [dataclasses.replace(rule, transform=transform) if rule.hf and rule.hf[0].endswith(suffix) else rule
                    for rule in super().weight_rules(cfg)]

    return Broken


def score_bias_dropped(base: type | None = None) -> type:
    """``e_score_correction_bias`` not carried: the export writes transformers' initial zeros."""
    return _replace_rules(base or _deepseek_v3(), "e_score_correction_bias", Zeroed())


def kv_norm_skipped(base: type | None = None) -> type:
    """The kv LoRA norm's weight not carried (an identity norm: ones) on export."""
    return _replace_rules(base or _deepseek_v3(), "kv_a_layernorm.weight", Ones())


def routed_scaling_lost(base: type | None = None) -> type:
    """``routed_scaling_factor`` left out of the exported config (the class default then applies)."""
    base = base or _deepseek_v3()

    class RoutedScalingLost(base):
        def export_config(self, cfg):
            out = super().export_config(cfg)
            out.pop("routed_scaling_factor", None)
            return out

    return RoutedScalingLost


def mtp_dropped(base: type | None = None) -> type:
    """MTP layers claimed on import and thrown away (never reach native, never come back)."""
    from converters.weights.rules import WeightRule

    base = base or _deepseek_v3()

    class Swallow(Transform):
        n_native = 0

        @property
        def n_hf(self):
            return self.count

        def __init__(self, count):
            object.__setattr__(self, "count", count)

        def export(self, xs):
            return []

        def import_(self, xs):
            return []

    class MTPDropped(base):
        def fit_checkpoint(self, cfg, hf_names):
            import re

            self._extra = sorted(n for n in hf_names if (m := re.match(r"model\.layers\.(\d+)\.", n))
                                 and int(m.group(1)) >= cfg.num_layers)
            return cfg

        def weight_rules(self, cfg):
            rules = super().weight_rules(cfg)
            extra = getattr(self, "_extra", [])
            return rules + ([WeightRule((), tuple(extra), Swallow(len(extra)))] if extra else [])

    return MTPDropped
