"""Meta-tests: ``forward_equivalence`` compares native with HF's sdpa attention (what transformers
loads by default) as well as eager, so an sdpa path whose semantics differ from eager's is seen.
(transformers 4's Qwen2 was such a case: its eager mask ignored ``use_sliding_window``.) The broken
input here is an sdpa path that builds no mask, only ``is_causal``: it ignores the sliding window
and the padding, while eager stays right.
"""
from __future__ import annotations

import pytest
import torch
from transformers.modeling_utils import AttentionInterface

from converters.gemma2 import Gemma2Converter
from converters.mistral import MistralConverter
import native
from properties import PropertyViolation, common, forward
from properties.violation import Reporter

from .low_precision import hf_dict

SDPA = AttentionInterface._global_mapping["sdpa"]


def maskless_sdpa(module, query, key, value, attention_mask, **kwargs):
    kwargs.pop("is_causal", None)
    return SDPA(module, query, key, value, None, is_causal=True, **kwargs)


@pytest.fixture
def broken_sdpa(monkeypatch):
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", maskless_sdpa)


def windowed_mistral():
    converter = MistralConverter()
    return converter, converter.import_config(hf_dict("mistral", sliding_window=3))


def test_sdpa_is_compared_where_the_model_offers_it():
    converter, cfg = windowed_mistral()
    assert forward.attentions(converter.export_config(cfg)) == ("eager", "sdpa")
    gemma2 = Gemma2Converter()
    assert forward.attentions(gemma2.export_config(gemma2.import_config(hf_dict("gemma2")))) == ("eager",)


def test_the_sdpa_model_runs_sdpa():
    converter, cfg = windowed_mistral()
    state = dict(converter.export_weights(cfg, native.random_state(cfg, 0)))
    model = common.hf_model(Reporter("forward_equivalence", converter), converter.export_config(cfg), state,
                            torch.float32, attention="sdpa")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("seed", [0, 1])
def test_an_sdpa_path_unlike_eager_is_rejected(broken_sdpa, seed):
    converter, cfg = windowed_mistral()
    with pytest.raises(PropertyViolation, match="sdpa attention") as info:
        forward.forward_equivalence(converter, cfg, seed)
    assert info.value.property == "forward_equivalence"


def test_eager_alone_does_not_see_it(broken_sdpa, monkeypatch):
    """Why the sdpa column exists: the same example passes when only eager is compared."""
    monkeypatch.setattr(forward, "attentions", lambda hf_cfg: ("eager",))
    converter, cfg = windowed_mistral()
    forward.forward_equivalence(converter, cfg, 0)
