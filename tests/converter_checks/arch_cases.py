"""Checks shared by the per-architecture converter tests (phi3, olmo2, starcoder2, gpt_neox): HF
config normalisation through transformers' own config class, forward comparison against the HF
model, HF→native→HF weight round trips, refusals."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import pytest
import torch

import native
from converters import ConversionError
from converters.base import METADATA_KEYS
from fixtures.tolerances import HAND_WRITTEN_FLOAT64, compare
from properties.common import (
    bits_equal, causal_lm_class, describe_difference, hf_config, hf_model, native_model, quiet_transformers,
)
from properties.violation import Reporter
from strategies.building_blocks import min_forward_length


def normalize(hf: Mapping[str, Any]) -> dict[str, Any]:
    """What transformers makes of an HF dict: ``AutoConfig.for_model(**hf).to_dict()`` without the
    file metadata, and without the legacy ``type`` key transformers leaves inside
    ``rope_parameters`` beside an equal ``rope_type``."""
    with quiet_transformers():
        d = hf_config(hf).to_dict()
    d = {k: v for k, v in d.items() if k not in METADATA_KEYS}
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params.get("type") == params.get("rope_type"):
        params.pop("type")
    return d


def assert_hf_roundtrip(converter, hf: Mapping[str, Any]) -> native.ModelConfig:
    """import → export equals the input as transformers reads both; the import is a fixed point."""
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
    hf = converter.export_config(cfg)
    assert converter.import_config(hf) == cfg
    assert not converter.unclaimed_fields(cfg)
    return hf


def refusal(converter, cfg: native.ModelConfig, *fragments: str) -> str:
    """export_config refuses ``cfg`` with a message containing every fragment (the field)."""
    with pytest.raises(ConversionError) as info:
        converter.export_config(cfg)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in refusal message {message!r}"
    return message


def padded_batch(cfg: native.ModelConfig, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of random tokens; row 1 has padding keys: a hole after its first token, shorter than
    every sliding window, so that no query row is fully masked. (transformers' float64 eager
    attention adds ``finfo(float64).min``, which its float32 softmax turns into ``-inf``: a fully
    masked row becomes NaN, and ``probs @ v`` then spreads it to every position of the next layer.)
    With a window of 1 no padding is possible, and row 1 is unpadded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    windows = [b.attention.window for b in cfg.decoder.blocks if b.attention.window is not None]
    hole = min([2, length - 2] + [w - 1 for w in windows])
    if hole > 0:
        mask[1, 1:1 + hole] = 0
    return ids, mask


def forward_comparison(converter, cfg: native.ModelConfig, *, seed: int = 0, length: int | None = None,
                       dtype: torch.dtype = torch.float64):
    """Native logits vs the HF model's, same random weights, on a padded batch longer than every
    window and every original context. Returns the :class:`fixtures.tolerances.Comparison`."""
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
    return compare(ours, theirs, dtype, mask=mask.bool())


def hf_disk_state(hf: Mapping[str, Any], seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random checkpoint in the on-disk names ``save_pretrained`` writes for this config (tied
    weights dropped, transformers' conversion mapping reverted), every tensor random."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    config = hf_config(hf)
    with quiet_transformers(), torch.device("meta"):
        model = causal_lm_class(config)._from_config(config, dtype=dtype, attn_implementation="eager")
    state = remove_tied_weights_from_state_dict(dict(model.state_dict()), model)
    state = revert_weight_conversion(model, state)
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tuple(t.shape), generator=g, dtype=torch.float32).to(dtype) for name, t in state.items()}


def assert_weights_roundtrip(converter, hf: Mapping[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32):
    """HF → native → HF is bit-exact, names and shapes match the native layout, nothing shared."""
    cfg = converter.import_config(hf)
    source = hf_disk_state(hf, seed, dtype)
    ours = dict(converter.import_weights(cfg, source))
    expected = native.state_shapes(cfg)
    assert sorted(ours) == sorted(expected), f"native names {sorted(set(ours) ^ set(expected))}"
    for name, shape in expected.items():
        assert tuple(ours[name].shape) == shape, name
    back = dict(converter.export_weights(cfg, ours))
    assert sorted(back) == sorted(source), f"HF names differ: {sorted(set(back) ^ set(source))}"
    for name, tensor in source.items():
        assert bits_equal(back[name], tensor), f"{name}: {describe_difference(back[name], tensor)}"
    pointers = {t.untyped_storage().data_ptr() for t in source.values()}
    assert not any(t.untyped_storage().data_ptr() in pointers for t in back.values())
    return cfg, ours


def with_layers(cfg: native.ModelConfig, fn) -> native.ModelConfig:
    import dataclasses

    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers([fn(b) for b in cfg.decoder.layers()]))


def standard_tests(converter, forward_cases: dict[str, native.ModelConfig], *, hf_examples=(),
                   weight_seed: int = 3) -> dict[str, Any]:
    """The tests every per-architecture file shares, built from its data alone (its converter, its
    named forward cases, its HF examples): the config round trip of each case and example, the
    forward pass against transformers within ``fixtures.tolerances``, and HF weights bit-exact. A
    file installs them with ``globals().update(standard_tests(...))``. (The laws over *drawn*
    configs are the gate's, tests/test_properties.py; they are not re-run here.)"""
    import pytest

    names = sorted(forward_cases)
    examples = list(hf_examples)

    @pytest.mark.parametrize("hf", examples, ids=[f"example{i}" for i in range(len(examples))])
    def test_example_configs_roundtrip(hf):
        assert_hf_roundtrip(converter, hf)

    @pytest.mark.parametrize("name", names)
    def test_forward_case_configs_roundtrip(name):
        assert_native_roundtrip(converter, forward_cases[name])

    @pytest.mark.parametrize("name", names)
    def test_forward_matches_transformers(name):
        result = forward_comparison(converter, forward_cases[name])
        assert result.ok and result.error < HAND_WRITTEN_FLOAT64, result.describe()

    @pytest.mark.parametrize("name", names)
    def test_hf_weights_roundtrip_bit_exact(name):
        assert_weights_roundtrip(converter, converter.export_config(forward_cases[name]), seed=weight_seed)

    tests = [test_forward_case_configs_roundtrip, test_forward_matches_transformers, test_hf_weights_roundtrip_bit_exact]
    if examples:
        tests.append(test_example_configs_roundtrip)
    return {test.__name__: test for test in tests}
