"""Meta-tests: every property rejects a deliberately broken converter within the gate's budget.

For each bug in tests/meta/broken.py (bugs real converters have shipped), the property named beside
it runs exactly as in the gate (the ``gate`` profile: derandomized, its example budget, explicit
examples first) and must raise :class:`properties.PropertyViolation` for that property. Shrinking
is left out (it does not change whether the bug is found, only how small the report is).

Bugs needing an architecture that is not in the tree yet (a norm offset: Gemma; expert order: an
MoE converter) are skipped with the reason.
"""
from __future__ import annotations

import importlib

import pytest
from hypothesis import Phase, settings

from fixtures import profiles
from properties import PROPERTIES, PropertyViolation
from fixtures import runner

from . import broken


def gate_settings(prop: str) -> settings:
    return settings(profiles.settings_for(prop, "gate"), phases=(Phase.explicit, Phase.reuse, Phase.generate))


def converter_class(module: str, name: str) -> type:
    """A converter class of an architecture that may not exist yet (skip, with the reason)."""
    try:
        return getattr(importlib.import_module(f"converters.{module}"), name)
    except (ImportError, AttributeError):
        pytest.skip(f"needs converters.{module}.{name}, which is not in the tree")


def gemma_norm_offset_added():
    return broken.norm_offset_added(converter_class("gemma", "GemmaConverter"))()


def mixtral_expert_order_reversed():
    return broken.expert_order_reversed(converter_class("mixtral", "MixtralConverter"))()


def mixtral_router_rows_reversed():
    return broken.router_rows_reversed(converter_class("mixtral", "MixtralConverter"))()


#: (bug, broken converter factory, the property that must reject it)
CASES = [
    ("qk_permutation_skipped", broken.QKPermutationSkipped, "forward_equivalence"),
    ("k_and_v_swapped", broken.KVSwapped, "forward_equivalence"),
    ("gate_up_swapped", broken.GateUpSwapped, "forward_equivalence"),
    ("norm_offset_added", gemma_norm_offset_added, "forward_equivalence"),
    ("expert_order_reversed", mixtral_expert_order_reversed, "forward_equivalence"),
    ("router_rows_reversed", mixtral_router_rows_reversed, "forward_equivalence"),
    ("rope_theta_dropped", broken.RopeThetaDropped, "forward_equivalence"),
    ("rope_theta_dropped", broken.RopeThetaDropped, "config_roundtrip"),
    ("sliding_window_dropped", broken.SlidingWindowDropped, "forward_equivalence"),
    ("sliding_window_dropped", broken.SlidingWindowDropped, "config_roundtrip"),
    ("rope_scaling_dropped", broken.RopeScalingDropped, "hf_config_roundtrip"),
    ("plain_rope_factor_written", broken.PlainRopeFactor, "hf_config_accepted"),
    ("head_dim_dropped", broken.HeadDimDropped, "architecture_coverage"),
    ("window_ignored", broken.WindowIgnored, "architecture_coverage"),
    ("window_ignored", broken.WindowIgnored, "unrepresentable_rejected"),
    ("export_upcasts", broken.ExportUpcasts, "weight_roundtrip"),
    ("lm_head_exported_while_tied", broken.LmHeadExportedWhileTied, "key_bijection"),
    ("lm_head_exported_while_tied", broken.LmHeadExportedWhileTied, "tied_embeddings"),
    ("tie_flag_lost", broken.TieFlagLost, "tied_embeddings"),
    ("tie_flag_lost", broken.TieFlagLost, "config_roundtrip"),
    ("bias_dropped", broken.BiasDropped, "bias_handling"),
    ("import_upcasts", broken.ImportUpcasts, "checkpoint_roundtrip"),
    ("rotary_on_nope", lambda: broken.rotary_on_nope()(), "forward_equivalence"),
    ("score_bias_dropped", lambda: broken.score_bias_dropped()(), "forward_equivalence"),
    ("routed_scaling_lost", lambda: broken.routed_scaling_lost()(), "forward_equivalence"),
    ("routed_scaling_lost", lambda: broken.routed_scaling_lost()(), "config_roundtrip"),
    ("kv_norm_skipped", lambda: broken.kv_norm_skipped()(), "forward_equivalence"),
]


@pytest.mark.parametrize("bug,make,prop", [pytest.param(*case, id=f"{case[0]}-{case[2]}") for case in CASES])
def test_broken_converter_is_rejected(bug, make, prop):
    converter = make()
    with pytest.raises(PropertyViolation) as info:
        runner.hypothesis_test(prop, converter, settings=gate_settings(prop))()
    assert info.value.property == prop, f"{bug}: {prop} raised a violation of {info.value.property}"


def test_every_property_has_a_broken_converter():
    caught = {prop for _, _, prop in CASES}
    missing = [name for name in PROPERTIES if name not in caught]
    assert not missing, f"properties no meta-test shows rejecting a bug: {missing}"


def test_every_property_is_in_the_gate():
    """tests/test_properties.py has one ``test_<property>`` per property (none forgotten)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "test_properties.py"
    spec = importlib.util.spec_from_file_location("gate_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in PROPERTIES if not callable(getattr(module, f"test_{name}", None))]
    assert not missing, f"properties without a gate test: {missing}"
