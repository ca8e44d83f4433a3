"""Meta-tests: the round-trip properties compare with the source bytes, so a lossy transform is
rejected in every dtype, even one exact on everything an export can produce.

The broken converter is the Gemma layout before norms were zero-centred (``broken.gain_stored``):
the native norm holds the gain ``1 + w`` and the converter subtracts and adds 1. Native gains drawn
around 1 survive ``- 1`` exactly, so native → HF → native and HF → native → HF *from an export* are
exact; HF's own small ``w`` (real checkpoints: std ~0.05) do not survive ``1 + w``. The configs are
the converter's own imports of small HF configs (its norms are gains, which the real strategies do
not draw), and the violation must be a round trip compared with its source.
"""
from __future__ import annotations

import pytest

from converters.gemma import GemmaConverter
from converters.gemma2 import Gemma2Converter
from converters.gemma3_text import Gemma3TextConverter
from properties import PropertyViolation
from properties.checkpoint import checkpoint_roundtrip, options
from properties.common import weight_dtype
from properties.weights import weight_roundtrip

from . import broken
from .low_precision import hf_dict

BASES = {"gemma": GemmaConverter, "gemma2": Gemma2Converter, "gemma3_text": Gemma3TextConverter}


def gain_stored(model_type: str):
    converter = broken.gain_stored(BASES[model_type])()
    return converter, converter.import_config(hf_dict(model_type))


@pytest.mark.parametrize("model_type", sorted(BASES))
@pytest.mark.parametrize("seed", range(4), ids=lambda s: str(weight_dtype(s)).removeprefix("torch."))
def test_weight_roundtrip_rejects_a_lossy_norm_offset(model_type, seed):
    converter, cfg = gain_stored(model_type)
    with pytest.raises(PropertyViolation, match="HF -> native -> HF is not bit-exact") as info:
        weight_roundtrip(converter, cfg, seed)
    assert info.value.property == "weight_roundtrip"


@pytest.mark.parametrize("model_type", sorted(BASES))
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_checkpoint_roundtrip_rejects_a_lossy_norm_offset(model_type, seed):
    converter, cfg = gain_stored(model_type)
    with pytest.raises(PropertyViolation, match="elements differ") as info:
        checkpoint_roundtrip(converter, cfg, seed)
    assert info.value.property == "checkpoint_roundtrip", options(seed)


@pytest.mark.parametrize("model_type", sorted(BASES))
def test_the_lossy_converter_is_exact_on_its_own_exports(model_type):
    """What hid the bug: native → HF → native is exact for native gains around 1, in every dtype."""
    import native

    converter, cfg = gain_stored(model_type)
    for seed in range(4):
        state = native.random_state(cfg, seed, dtype=weight_dtype(seed))
        back = dict(converter.import_weights(cfg, dict(converter.export_weights(cfg, state))))
        assert all(back[n].equal(t) for n, t in state.items())
