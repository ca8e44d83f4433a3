"""Single converter bugs at every precision: fixed small configs that exercise each bug,
and the figures ``benchmarks/power_table.py`` prints and ``test_low_precision_power.py`` asserts.

For float64/float32 the error is ``rel(native, HF)`` in that dtype against the static tolerance
(``fixtures.tolerances.tolerance``); for bfloat16/float16 it is ``rel(native in dtype, HF float64)``
against the derived tolerance ``2 × rel(HF in dtype, HF float64) + floor``
(``fixtures.tolerances.derived_tolerance``), exactly as ``forward_equivalence`` judges them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import native
from converters.gemma import GemmaConverter
from converters.llama import LlamaConverter
from converters.mistral import MistralConverter
from fixtures import tolerances
from properties import common
from properties.forward import inputs, measure_reduced
from properties.violation import Reporter

from . import broken

DTYPES = ("float64", "float32", "bfloat16", "float16")

_SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)


def hf_dict(model_type: str, **overrides) -> dict:
    """A small HF config dict: transformers' defaults for ``model_type`` with ``overrides``."""
    from transformers import AutoConfig

    with common.quiet_transformers():
        return AutoConfig.for_model(model_type, **{**_SMALL, **overrides}).to_dict()


class BiasZeroed(LlamaConverter):
    """The o_proj bias written as zeros: the numerical effect of a dropped bias. (The real
    ``BiasDropped`` omits the tensor, which ``forward_equivalence`` reports as a missing key before
    any number is computed; this variant measures what the bug does to the logits.)"""

    def export_weights(self, cfg, state):
        for n, t in super().export_weights(cfg, state):
            yield n, (torch.zeros_like(t) if n.endswith("o_proj.bias") else t)


class RopeScalingDroppedOnExport(LlamaConverter):
    """llama3 rope scaling not written on export (transformers then runs plain RoPE)."""

    def export_config(self, cfg):
        hf = super().export_config(cfg)
        rope = hf.get("rope_parameters", {})
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": rope.get("rope_theta", 10000.0)}
        return hf


@dataclass(frozen=True)
class Bug:
    name: str
    make: object  # converter factory
    model_type: str
    overrides: dict

    def converter(self):
        return self.make()

    def config(self) -> native.ModelConfig:
        hf = hf_dict(self.model_type, **self.overrides)
        return self.converter().import_config(hf)


LLAMA3 = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}

#: (bug, broken converter, config) for every single bug the reduced-precision checks must catch.
BUGS = [
    Bug("qk_permutation_skipped", broken.QKPermutationSkipped, "llama", {}),
    Bug("k_and_v_swapped", broken.KVSwapped, "llama", {}),
    Bug("bias_missing (zeroed)", BiasZeroed, "llama", {"attention_bias": True}),
    Bug("norm_offset_added", lambda: broken.norm_offset_added(GemmaConverter)(), "gemma", {}),
    Bug("rope_scaling_dropped", RopeScalingDroppedOnExport, "llama", LLAMA3),
    Bug("sliding_window_dropped", broken.SlidingWindowDropped, "mistral", {"sliding_window": 4}),
]


@dataclass(frozen=True)
class Cell:
    bug: str
    dtype: str
    error: float
    tolerance: float
    baseline: float | None  # HF's own error against float64 (reduced dtypes)
    tokens: int

    @property
    def margin(self) -> float:
        return self.error / self.tolerance if self.error == self.error else float("inf")


def measure(bug: Bug, dtype: str, seed: int = 0) -> Cell:
    converter = bug.converter()
    cfg = bug.config()
    report = Reporter("forward_equivalence", converter)
    hf_cfg = common.export_config(report, converter, cfg)
    state = native.random_state(cfg, seed, dtype=torch.float32)
    name = tolerances.dtype_name(dtype)
    if name in tolerances.REDUCED_DTYPES:
        m = measure_reduced(report, converter, cfg, hf_cfg, state, seed, getattr(torch, name))
        return Cell(bug.name, name, m.native_error, m.tolerance, m.hf_error, m.tokens)
    dt = getattr(torch, name)
    ids, mask = inputs(cfg, seed, dt)
    typed = {k: v.to(dt) for k, v in state.items()}
    hf = common.hf_model(report, hf_cfg, common.export_weights(report, converter, cfg, typed), dt)
    model = common.native_model(cfg, typed, dt)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    error = tolerances.relative_error(ours, theirs, mask.bool())
    return Cell(bug.name, name, error, tolerances.tolerance(name), None, int(ids.shape[1]))
