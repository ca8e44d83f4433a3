"""``forward_equivalence``: native logits equal HF logits for the converted weights, within the
dtype's tolerance (fixtures.tolerances), on random tokens long enough to exercise every window and
every rotary regime of the config.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch

import native
from converters.hf_reference import exact_float64
from fixtures import tolerances
from native import DynamicRotary, LongRopeRotary
from native.lengths import length_thresholds

from . import common, routing
from .common import export_config, export_weights
from .violation import Reporter

#: A longer sequence means the strategy drew a large window or context: scale the config down.
MAX_SEQ_LEN = 1024
BATCH = 2
DTYPES = tolerances.CPU_DTYPES


def sequence_length(cfg: native.ModelConfig, extra: int = 0, past_context: bool = True) -> int:
    """One more than every length at which the config changes behaviour: each sliding window, each
    ``original_max_position_embeddings`` (llama3/yarn/longrope), and ``max_position_embeddings``
    where the rotary depends on the sequence length past it (dynamic NTK; longrope picks its long
    factors past the original context). At least 8. ``past_context=False`` stays within
    ``max_position_embeddings`` (a framework may refuse longer inputs: the adapter laws)."""
    length = max([7, *length_thresholds(cfg, (DynamicRotary, LongRopeRotary) if past_context else ())]) + 1 + extra
    return length if past_context else max(8, min(length, cfg.max_position_embeddings))


def inputs(cfg: native.ModelConfig, seed: int, dtype: torch.dtype, device: str = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``: a batch of 2 whose second row has 1..T/2 padding tokens.

    The padding is on the left (so padded keys precede the real ones and the mask matters), except
    in float64: transformers' eager attention adds ``finfo(float64).min`` for masked keys and then
    takes the softmax in float32, where that is ``-inf``; a fully masked (padding) query row becomes
    NaN, and ``0 × NaN`` in the next layer's ``probs @ values`` spreads it over the whole row. Right
    padding keeps padding keys out of every real query's row, and fewer padding tokens than the
    smallest sliding window keeps every padding query's row non-empty (window 1: no padding), so
    float64 compares what HF computes correctly."""
    generator = torch.Generator().manual_seed(seed)
    extra = int(torch.randint(0, 4, (), generator=generator))
    T = sequence_length(cfg, extra)
    if T > MAX_SEQ_LEN:
        raise ValueError(f"forward_equivalence needs {T} tokens for this config (windows/contexts); "
                         f"strategies must draw them below {MAX_SEQ_LEN}")
    ids = torch.randint(0, cfg.vocab_size, (BATCH, T), generator=generator)
    mask = torch.ones(BATCH, T, dtype=torch.long)
    pad = int(torch.randint(1, max(2, T // 2 + 1), (), generator=generator))
    if dtype == torch.float64:
        windows = [b.attention.window for b in cfg.decoder.blocks if b.attention.window is not None]
        pad = min([pad] + [w - 1 for w in windows])
        mask[1, T - pad:] = 0
    else:
        mask[1, :pad] = 0
    return ids.to(device), mask.to(device)


def _in_test() -> bool:
    try:
        from hypothesis.control import currently_in_test_context

        return currently_in_test_context()
    except ImportError:  # pragma: no cover
        return False


def _inconclusive(why: str) -> None:
    """Under Hypothesis the example is rejected (it counts as neither pass nor fail, and a strategy
    that draws too many is reported by Hypothesis's health check); called directly, a warning."""
    if _in_test():
        from hypothesis import reject

        reject()
    warnings.warn(why, stacklevel=3)


def gains_exact_in_float32(cfg: native.ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each zero-centred norm offset ``w`` moved to the nearest value where ``1 + w``
    is exact in float32 (``fl(1 + w) - 1``, exact by Sterbenz). transformers forms Gemma's gain
    ``1 + w`` in float32 even in a float64 model, a rounding its float32 run shares and so no
    measured baseline sees; with these offsets both sides hold the same gain, and the comparison
    measures arithmetic. (Round trips draw arbitrary offsets: properties.weights.random_hf_state.)"""
    out = dict(state)
    for name, norm in native.layout.norm_configs(cfg).items():
        if getattr(norm, "zero_centered", False):
            w = state[name]
            out[name] = ((1.0 + w.to(torch.float32)) - 1.0).to(w.dtype)
    return out


def attentions(hf_cfg) -> tuple[str, ...]:
    """HF attention implementations native is compared with: ``eager`` always, and ``sdpa`` (what
    transformers loads by default) wherever the model class offers it. (Gemma2 does not: sdpa
    cannot softcap, so its default is eager.) Flash attention needs a GPU."""
    cls = common.causal_lm_class(common.hf_config(hf_cfg))
    return ("eager", "sdpa") if getattr(cls, "_supports_sdpa", False) else ("eager",)


def forward_equivalence(converter, cfg: native.ModelConfig, seed: int = 0, *, device: str = "cpu",
                        dtypes: tuple[str, ...] = DTYPES) -> None:
    """For each dtype and each HF attention implementation (:func:`attentions`: eager, and sdpa,
    transformers' default, where the model offers it): native logits vs HF logits of the exported
    weights, relative error over the unpadded positions within
    ``fixtures.tolerances.tolerance(dtype, baseline)``. Config fields that only one implementation
    reads (masks built differently for sdpa) are thus checked as users run them.

    (bfloat16/float16 columns go to :func:`measure_reduced`, with the derived tolerance, eager.) The
    float64/float32 baseline (DESIGN §4) is HF's own error, measured per example and implementation:
    HF in the reduced dtype against the same implementation in float64 on the same inputs
    (``fixtures.tolerances``; against another implementation it would absorb a difference of meaning),
    and never below the static bound of the dtype. HF's float64 models keep some float32 steps
    (rotary tables, RMSNorm upcasts, Gemma's float32 norms), so float64's baseline is the larger of
    float32's measurement and HF float64's distance from itself with those steps in float64
    (``converters.hf_reference.exact_float64``): the float32 run shares those steps and cannot see
    their error, which a tiny ill-conditioned Gemma amplifies past the static bound. Such a model
    thus gets the wider tolerance its HF reference needs, and a single realistic bug (1e-2 and up)
    stays far outside it.

    On failure the message gives the implementation, the error, the tolerance, the worst element and
    the first layer whose output diverges. Under Hypothesis, ``target()`` is called with each
    column's error relative to its tolerance."""
    report = Reporter("forward_equivalence", converter)
    hf_cfg = export_config(report, converter, cfg)
    state = gains_exact_in_float32(cfg, native.random_state(cfg, seed, dtype=torch.float32))
    wide_ids, wide_mask = inputs(cfg, seed, torch.float64, device)  # inputs HF float64 computes correctly
    models: dict[tuple[torch.dtype, str], torch.nn.Module] = {}
    wide: dict[tuple[torch.dtype, str], torch.Tensor] = {}
    implementations = attentions(hf_cfg)

    def hf_in(dtype: torch.dtype, attention: str = "eager"):
        if (dtype, attention) not in models:
            typed = {k: v.to(dtype) for k, v in state.items()}
            models[dtype, attention] = common.hf_model(report, hf_cfg, export_weights(report, converter, cfg, typed),
                                                       dtype, device, attention)
        return models[dtype, attention]

    def wide_logits(dtype: torch.dtype, attention: str = "eager") -> torch.Tensor:
        if (dtype, attention) not in wide:
            with torch.no_grad():
                wide[dtype, attention] = hf_in(dtype, attention)(input_ids=wide_ids, attention_mask=wide_mask).logits
        return wide[dtype, attention]

    def exact_logits(attention: str) -> torch.Tensor:
        """HF float64 with its float32 steps computed in float64 (built and run that way)."""
        if ("exact", attention) not in wide:
            typed = {k: v.to(torch.float64) for k, v in state.items()}
            with exact_float64(), torch.no_grad():
                model = common.hf_model(report, hf_cfg, export_weights(report, converter, cfg, typed),
                                        torch.float64, device, attention)
                wide["exact", attention] = model(input_ids=wide_ids, attention_mask=wide_mask).logits
        return wide["exact", attention]

    def measured_baseline(dtype: torch.dtype, attention: str) -> float:
        low = torch.float32 if dtype == torch.float64 else dtype
        reference = wide_logits(torch.float64, attention)  # the same implementation: rounding only, never
        measured = tolerances.relative_error(wide_logits(low, attention), reference, wide_mask.bool())  # semantics
        if dtype == torch.float64:  # and its float32 steps' own error, which the line above cannot see
            measured = max(measured, tolerances.relative_error(reference, exact_logits(attention), wide_mask.bool()))
        return measured

    for name in dtypes:
        dtype = getattr(torch, tolerances.dtype_name(name))
        if tolerances.dtype_name(name) in tolerances.REDUCED_DTYPES:
            m = measure_reduced(report, converter, cfg, hf_cfg, state, seed, dtype, device)
            if m.inconclusive:
                _inconclusive(f"forward_equivalence[{converter.model_type}] {m.dtype}: every position follows a "
                              f"routing near-tie; this example judges nothing in {m.dtype}")
                continue
            if _in_test():
                from hypothesis import target

                target(min(m.margin, 1e9), label=f"relative logit error / derived tolerance ({m.dtype})")
            if not m.ok:
                report.fail(f"logits ({m.dtype}, {device}, T={m.tokens})", m.describe())
            continue
        ids, mask = inputs(cfg, seed, dtype, device)
        typed = {k: v.to(dtype) for k, v in state.items()}
        model = common.native_model(cfg, typed, dtype, device)
        with torch.no_grad():
            ours = model(ids, attention_mask=mask)
        for attention in implementations:
            column = f"{name}, {attention}"
            hf = hf_in(dtype, attention)
            with torch.no_grad():
                theirs = hf(input_ids=ids, attention_mask=mask).logits
            if ours.shape != theirs.shape:
                report.fail(f"logits ({column})", f"native shape {tuple(ours.shape)} vs HF {tuple(theirs.shape)}")
            baseline = max(tolerances.tolerance_for(dtype).baseline_bound, measured_baseline(dtype, attention))
            result = tolerances.compare(ours, theirs, dtype, f"logits ({column})", mask=mask.bool(), baseline=baseline)
            if _in_test():
                from hypothesis import target

                error = result.error if result.error == result.error else float("inf")
                target(min(error / result.tolerance, 1e9), label=f"relative logit error / tolerance ({column})")
            if not result.ok:
                where = first_divergence(model, hf, ids, mask, dtype, baseline)
                report.fail(f"logits ({column} attention, T={ids.shape[1]})", f"{result.describe()}; {where}")


def first_divergence(model, hf, ids, mask, dtype, baseline: float | None = None) -> str:
    """The first layer whose output differs beyond tolerance (HF ``hidden_states[i]`` is the input
    of layer ``i``, like native ``hidden[i]``; HF's last entry is after the final norm, so the last
    layer is judged by the logits)."""
    with torch.no_grad():
        _, ours = model(ids, attention_mask=mask, return_hidden=True)
        theirs = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    if theirs is None:
        return "HF returned no hidden states"
    layers = len(ours) - 1
    for i in range(min(layers, len(theirs) - 1)):
        result = tolerances.compare(ours[i], theirs[i], dtype, f"hidden[{i}]", mask=mask.bool(), baseline=baseline)
        if not result.ok:
            what = "the embedding output" if i == 0 else f"layer {i - 1}'s output"
            return f"first divergence: {what} ({result.describe()})"
    return f"hidden states agree up to the last layer's input: divergence in layer {layers - 1}, the final norm or the head"


# ------------------------------------------------------------------ reduced precision
@dataclass
class ReducedMeasurement:
    """One reduced-precision comparison: native and HF in ``dtype``, each against HF float64."""

    dtype: str
    device: str
    tokens: int
    native_error: float  # rel(native in dtype, HF float64) on valid logits
    hf_error: float  # rel(HF in dtype, HF float64): HF's own rounding
    tolerance: float  # tolerances.derived_tolerance(dtype, hf_error)
    divergence: str = ""  # first layer where native leaves the band, when it does
    near_ties: int = 0  # positions left out after a routing near-tie (properties.routing)
    inconclusive: bool = False  # every position was left out: the example judges nothing

    @property
    def ok(self) -> bool:
        return self.native_error <= self.tolerance  # False for NaN/inf

    @property
    def margin(self) -> float:
        """error / tolerance: > 1 means the comparison fails."""
        e = self.native_error if self.native_error == self.native_error else float("inf")
        return e / self.tolerance

    def describe(self) -> str:
        ties = f" ({self.near_ties} positions after a routing near-tie left out)" if self.near_ties else ""
        return (f"relative logit error of native {self.dtype} vs HF float64 {self.native_error:.3e} exceeds "
                f"{self.tolerance:.3e} = derived tolerance (HF {self.dtype}'s own error {self.hf_error:.3e}){ties}; "
                f"{self.divergence}")


def measure_reduced(report: Reporter, converter, cfg: native.ModelConfig, hf_cfg, state, seed: int,
                    dtype: torch.dtype, device: str = "cpu", ids=None, mask=None) -> ReducedMeasurement:
    """HF float64 (reference), HF in ``dtype`` and native in ``dtype`` on the same converted weights
    (``state`` cast) and the same inputs. The inputs are the float64 ones of :func:`inputs` (right
    padding, fewer pads than the smallest window): the reference must not meet HF's float64 NaN on
    a fully masked padded query row. Per-layer hidden states (each layer's input) are compared in
    the same relative-norm terms, with each layer's own HF error as its baseline, to name the first
    layer where native leaves the band."""
    name = tolerances.dtype_name(dtype)
    if ids is None:
        ids, mask = inputs(cfg, seed, torch.float64, device)
    valid = mask.bool()
    # The reference runs the weights the reduced-precision models hold (rounded to ``dtype``): their
    # rounding is common to native and HF, and left in it would be counted as arithmetic error.
    ref_state = export_weights(report, converter, cfg,
                               {k: v.to(dtype).to(torch.float64) for k, v in state.items()})
    typed = {k: v.to(dtype) for k, v in state.items()}
    hf_state = export_weights(report, converter, cfg, typed)
    ref = common.hf_model(report, hf_cfg, ref_state, torch.float64, device)
    ref_logits, ref_hidden = _hf_run(ref, ids, mask)
    del ref
    hf = common.hf_model(report, hf_cfg, hf_state, dtype, device)
    hf_logits, hf_hidden = _hf_run(hf, ids, mask)
    del hf
    model = common.native_model(cfg, typed, dtype, device)
    with torch.no_grad():
        ours, our_hidden = model(ids, attention_mask=mask, return_hidden=True)
    del model

    def measured(positions: torch.Tensor, near_ties: int = 0) -> ReducedMeasurement:
        hf_error = tolerances.relative_error(hf_logits, ref_logits, positions)
        return ReducedMeasurement(name, str(device), int(ids.shape[1]),
                                  tolerances.relative_error(ours, ref_logits, positions), hf_error,
                                  tolerances.derived_tolerance(name, hf_error), near_ties=near_ties)

    m = measured(valid)
    if not m.ok and routing.has_routing(cfg):
        def band(layer: int) -> float:  # the router input sits between the layer's input and output
            return max(tolerances.derived_tolerance(name, tolerances.relative_error(hf_hidden[j], ref_hidden[j], valid))
                       for j in (layer, layer + 1))

        kept = valid & ~routing.near_tie_positions(cfg, state, ids, mask, band)
        if not kept.any():
            return dataclasses.replace(m, near_ties=int(valid.sum()), inconclusive=True)
        m, valid = measured(kept, int(valid.sum() - kept.sum())), kept
    if not m.ok:
        m.divergence = _first_reduced_divergence(name, our_hidden, hf_hidden, ref_hidden, valid)
    return m


def _hf_run(hf, ids, mask):
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.logits, out.hidden_states


def _first_reduced_divergence(name, ours, theirs, ref, valid) -> str:
    if theirs is None or ref is None:
        return "HF returned no hidden states"
    layers = len(ours) - 1
    for i in range(min(layers, len(theirs) - 1)):
        e = tolerances.relative_error(ours[i], ref[i], valid)
        base = tolerances.relative_error(theirs[i], ref[i], valid)
        tol = tolerances.derived_tolerance(name, base)
        if not e <= tol:
            what = "the embedding output" if i == 0 else f"layer {i - 1}'s output"
            return (f"first divergence: {what} (hidden[{i}]: native error {e:.3e} vs tolerance {tol:.3e}, "
                    f"HF's own {base:.3e})")
    return f"hidden states agree up to the last layer's input: divergence in layer {layers - 1}, the final norm or the head"
