"""Meta-tests: our own converters run through the adapter protocol (native is their foreign format),
and the adapter laws reject the deliberately broken converters of tests/meta/broken.py, under the
gate's budget, from HF configs alone. (The README adapter's broken variants are in
tests/adapters/test_readme_adapter.py.)"""
from __future__ import annotations

import pytest
import torch
from hypothesis import Phase, settings

import converters
from fixtures import profiles
from properties import PropertyViolation, adapter_laws
from fixtures import runner

from . import broken


def gate(law: str) -> settings:
    return settings(profiles.settings_for(law, "gate"), phases=(Phase.explicit, Phase.reuse, Phase.generate))


#: (bug, broken converter, the adapter law that must reject it)
CASES = [
    ("qk_permutation_skipped", broken.QKPermutationSkipped, "forward_equivalence"),
    ("k_and_v_swapped", broken.KVSwapped, "forward_equivalence"),
    ("gate_up_swapped", broken.GateUpSwapped, "forward_equivalence"),
    ("rope_theta_dropped", broken.RopeThetaDropped, "hf_config_roundtrip"),
    ("rope_scaling_dropped", broken.RopeScalingDropped, "hf_config_roundtrip"),
    ("export_upcasts", broken.ExportUpcasts, "weight_roundtrip"),
    ("import_upcasts", broken.ImportUpcasts, "weight_roundtrip"),
    ("lm_head_exported_while_tied", broken.LmHeadExportedWhileTied, "key_bijection"),
    ("lm_head_exported_while_tied", broken.LmHeadExportedWhileTied, "tied_embeddings"),
    ("tie_flag_lost", broken.TieFlagLost, "tied_embeddings"),
    ("bias_dropped", broken.BiasDropped, "bias_handling"),
]


class ForwardIgnoresBiases(type(converters.get("llama"))):
    """Converts biases faithfully, but its model never adds them: only a forward can tell."""

    def forward(self, cfg, state, input_ids, dtype):
        zeroed = {n: (torch.zeros_like(t) if n.endswith("bias") else t) for n, t in state.items()}
        return super().forward(cfg, zeroed, input_ids, dtype)


CASES.append(("forward_ignores_biases", ForwardIgnoresBiases, "bias_handling"))


@pytest.mark.parametrize("bug,make,law", [pytest.param(*c, id=f"{c[0]}-{c[2]}") for c in CASES])
def test_broken_converter_is_rejected_through_the_adapter_laws(bug, make, law):
    converter = make()
    with pytest.raises(PropertyViolation) as info:
        runner.adapter_hypothesis_test(law, converter, converter.model_type, settings=gate(law))()
    assert info.value.property == law, f"{bug}: {law} raised a violation of {info.value.property}"


def test_every_adapter_law_has_a_broken_converter():
    caught = {law for _, _, law in CASES}
    assert set(adapter_laws.ADAPTER_LAWS) <= caught, sorted(set(adapter_laws.ADAPTER_LAWS) - caught)


def test_native_adapters_are_the_registry():
    adapters = runner.load_adapters("native")
    assert sorted(adapters) == sorted(converters.names())
    assert all(adapter is converters.get(mt) or type(adapter) is type(converters.get(mt))
               for mt, adapter in adapters.items())
