"""Checks shared by the Gemma, Gemma2 and Gemma3 converter tests: forward comparison with a measured
float64 baseline, weight round trips with Gemma's zero-centred norms, and small native configs.

**The baselines.** transformers' Gemma RMSNorm computes ``x.float()``, i.e. in float32 even in
a float64 model, and Gemma2/3 have four such norms per layer (plus two q/k norms in Gemma3), each
rounding the whole residual stream. In tiny, ill-conditioned models (hidden 8, intermediate 1, one
head) that alone moves HF's float64 logits by up to ~3e-5 from a true float64 reference, above the
static float64 tolerance (8.6e-6). :func:`forward_check` therefore measures that error per example
(the same HF model run again with its Gemma norms computed in float64, everything else unchanged)
and adds it to the static float64 baseline bound, which covers HF's other float32 steps (rotary
tables, softmax) as for every architecture: ``baseline = growth·u + measured``. A single realistic
bug (a norm offset, unpermuted q, wrong softcap) moves logits by 1e-2..1, far above it.
In float32 the baseline is measured whole, as ``fixtures.tolerances`` prescribes: HF in float32
against the same weights in float64 with float64 norms (tiny drawn models reach ~7e-5 there, at the
static float32 tolerance).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from typing import Any, Iterator, Mapping

import torch

import native
from arch_cases import padded_batch
from fixtures.tolerances import Comparison, compare, relative_error, tolerance_for
from properties.common import bits_equal, describe_difference, hf_model, native_model
from properties.violation import Reporter
from strategies.building_blocks import min_forward_length

RMS = native.RMSNormConfig(eps=1e-6, zero_centered=True)


@contextlib.contextmanager
def gemma_norms_in_float64() -> Iterator[None]:
    """transformers' Gemma/Gemma2/Gemma3 RMSNorm computing in the input's precision (float64)
    instead of float32: HF's float64 forward without its float32 norm step."""
    from transformers.models.gemma import modeling_gemma
    from transformers.models.gemma2 import modeling_gemma2
    from transformers.models.gemma3 import modeling_gemma3

    classes = (modeling_gemma.GemmaRMSNorm, modeling_gemma2.Gemma2RMSNorm, modeling_gemma3.Gemma3RMSNorm)
    saved = [cls.forward for cls in classes]

    def forward(self, x):
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.to(h.dtype))).type_as(x)

    try:
        for cls in classes:
            cls.forward = forward
        yield
    finally:
        for cls, f in zip(classes, saved):
            cls.forward = f


@dataclasses.dataclass(frozen=True)
class ForwardResult:
    comparison: Comparison
    baseline: float | None
    length: int

    @property
    def ok(self) -> bool:
        return self.comparison.ok

    def describe(self) -> str:
        return f"T={self.length} baseline={self.baseline}: {self.comparison.describe()}"


def forward_check(converter, cfg: native.ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float64,
                  length: int | None = None) -> ForwardResult:
    """Native logits vs HF logits of the exported config and weights (random state at unit gain),
    on a padded batch longer than every window and original context. In float64 the tolerance uses
    HF's measured error from its float32 norms as the baseline (module docstring)."""
    state = native.random_state(cfg, seed, dtype=dtype)
    hf = converter.export_config(cfg)
    hf_state = dict(converter.export_weights(cfg, state))
    model = hf_model(Reporter("forward_equivalence", converter), hf, hf_state, dtype)
    reference = native_model(cfg, state, dtype)
    length = length or min_forward_length(cfg) + 3
    ids, mask = padded_batch(cfg, length, seed)
    with torch.no_grad():
        ours = reference(ids, mask)
        theirs = model(input_ids=ids, attention_mask=mask).logits
        if dtype == torch.float64:
            exact = model
        else:  # the same weights in float64
            wide = {k: v.to(torch.float64) for k, v in hf_state.items()}
            exact = hf_model(Reporter("forward_equivalence", converter), hf, wide, torch.float64)
        with gemma_norms_in_float64():
            reference_logits = exact(input_ids=ids, attention_mask=mask).logits
        measured = relative_error(theirs, reference_logits, mask.bool())
    # float64: HF's float32 norms measured, its other float32 steps under the static bound;
    # float32 and below: HF's whole error against (nearly) float64, as fixtures.tolerances intends
    baseline = tolerance_for(dtype).baseline_bound + measured if dtype == torch.float64 else measured
    return ForwardResult(compare(ours, theirs, dtype, mask=mask.bool(), baseline=baseline), baseline, length)


# --------------------------------------------------------------------------------------- configs
def _without_type_alias(value):
    """Drop transformers' legacy ``type`` beside an equal ``rope_type``, at any depth (Gemma3 nests
    rope dicts by layer type)."""
    if isinstance(value, dict):
        out = {k: _without_type_alias(v) for k, v in value.items()}
        if "type" in out and out["type"] == out.get("rope_type"):
            del out["type"]
        return out
    return value


def normalize(hf: Mapping[str, Any]) -> dict[str, Any]:
    """What transformers makes of an HF dict: ``AutoConfig.for_model(**hf).to_dict()`` without the
    file metadata and the legacy rope ``type`` alias."""
    from converters.base import METADATA_KEYS
    from properties.common import hf_config, quiet_transformers

    with quiet_transformers():
        d = hf_config(hf).to_dict()
    return _without_type_alias({k: v for k, v in d.items() if k not in METADATA_KEYS})


def assert_hf_roundtrip(converter, hf: Mapping[str, Any]) -> native.ModelConfig:
    """import → export equals the input as transformers reads both; import is a fixed point; the
    input is not mutated; every architecture field is claimed."""
    original = copy.deepcopy(dict(hf))
    cfg = converter.import_config(hf)
    assert dict(hf) == original, "import_config mutated its input"
    exported = converter.export_config(cfg)
    a, b = normalize(exported), normalize(hf)
    diff = {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    assert not diff, f"export(import(h)) differs from h (exported, original): {diff}"
    assert converter.import_config(exported) == cfg
    assert not converter.unclaimed_fields(cfg)
    return cfg


def assert_native_roundtrip(converter, cfg: native.ModelConfig) -> dict[str, Any]:
    """import(export(cfg)) == cfg through JSON; transformers' config class builds the export."""
    hf = converter.export_config(cfg)
    assert converter.import_config(json.loads(json.dumps(hf))) == cfg
    assert not converter.unclaimed_fields(cfg)
    normalize(hf)
    return hf


# -------------------------------------------------------------------------------------- weights
def assert_bitwise_equal(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: names differ {sorted(set(actual) ^ set(expected))}"
    for name, tensor in expected.items():
        assert bits_equal(actual[name], tensor), f"{what}: {name}: {describe_difference(actual[name], tensor)}"


def assert_no_shared_storage(outputs: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> None:
    pointers = {t.untyped_storage().data_ptr() for t in inputs.values()}
    assert not any(t.untyped_storage().data_ptr() in pointers for t in outputs.values())


def small_norms(state: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """An HF Gemma state with every norm weight ``w`` redrawn small (std 0.05, as real Gemma
    checkpoints have them), the other tensors kept: values where ``1 + w`` would round in every
    dtype, so only a converter that keeps ``w`` as it is round-trips them."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if name.endswith("norm.weight") or "layernorm" in name:
            t = (0.05 * torch.randn(t.shape, generator=g, dtype=torch.float32)).to(t.dtype)
        out[name] = t
    return out


def assert_weight_roundtrips(converter, cfg: native.ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
    """native → HF → native and HF → native → HF bit-exact; HF names/shapes equal the HF model's
    state dict (the tied ``lm_head`` excepted); inputs unchanged; outputs own their storage."""
    state = native.random_state(cfg, seed, dtype=dtype)
    saved = {k: v.clone() for k, v in state.items()}
    hf_state = dict(converter.export_weights(cfg, state))
    assert_bitwise_equal(state, saved, "export mutated its input")
    assert_no_shared_storage(hf_state, state)
    assert sorted(hf_state) == sorted(converter.hf_shapes(cfg))
    back = dict(converter.import_weights(cfg, hf_state))
    assert_bitwise_equal(back, state, "native -> HF -> native")

    hf_source = small_norms(dict(converter.export_weights(cfg, native.random_state(cfg, seed + 1, dtype=dtype))), seed)
    native_state = dict(converter.import_weights(cfg, hf_source))
    assert_no_shared_storage(native_state, hf_source)
    assert_bitwise_equal(dict(converter.export_weights(cfg, native_state)), hf_source, "HF -> native -> HF")
    return hf_state


def hf_model_keys(hf: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the HF model's state dict (built on ``meta``; tied ``lm_head`` dropped)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    from properties.common import causal_lm_class, hf_config, quiet_transformers

    config = hf_config(hf)
    with quiet_transformers(), torch.device("meta"):
        model = causal_lm_class(config)._from_config(config, attn_implementation="eager")
    state = remove_tied_weights_from_state_dict(dict(model.state_dict()), model)
    return {k: tuple(v.shape) for k, v in state.items()}


# --------------------------------------------------------------------------------- native configs
def block(*, placement: str = "pre", heads: int = 4, kv_heads: int = 2, head_dim: int = 8, bias: bool = False,
          window: int | None = None, rotary=native.DefaultRotary(theta=10000.0), softcap: float | None = None,
          scale: float | None = None, qk_norm: bool = False, activation: str = "gelu_tanh",
          intermediate: int = 40) -> native.BlockConfig:
    attention = native.AttentionConfig(
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, q_bias=bias, k_bias=bias, v_bias=bias, o_bias=bias,
        qk_norm=RMS if qk_norm else None, softmax_scale=scale, logit_softcap=softcap, window=window, rotary=rotary)
    return native.BlockConfig(placement=placement, norm=RMS, attention=attention,
                              mlp=native.MLPConfig(intermediate=intermediate, activation=activation))


def model(layers: list[native.BlockConfig], *, hidden: int = 32, vocab: int = 61, tied: bool = True,
          final_softcap: float | None = None, max_position: int = 64) -> native.ModelConfig:
    return native.ModelConfig(
        hidden_size=hidden, max_position_embeddings=max_position,
        embeddings=native.EmbeddingConfig(vocab_size=vocab, multiplier=hidden ** 0.5),
        decoder=native.DecoderConfig.from_layers(layers), final_norm=RMS,
        head=native.HeadConfig(tied=tied, final_softcap=final_softcap))
