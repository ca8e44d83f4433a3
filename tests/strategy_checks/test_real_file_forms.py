"""The HF strategies draw what real config.json files carry (strategies._hf_common.real_file_forms):
each form is reachable, for every architecture, and shrinks away."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

import strategies
from strategies import _hf_common as hc

FIND = settings(max_examples=400, database=None, suppress_health_check=list(HealthCheck), deadline=None)


def reaches(strategy, predicate, examples: int = 80) -> bool:
    """Whether ``examples`` generated draws (no shrinking: it is the slow part) include one
    satisfying ``predicate``."""
    seen = []

    @settings(max_examples=examples, database=None, phases=(Phase.generate,), derandomize=True,
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def draw(hf):
        if predicate(hf):
            seen.append(hf)

    draw()
    return bool(seen)


def _rope(hf):
    rope = hf.get("rope_scaling") if isinstance(hf.get("rope_scaling"), dict) else hf.get("rope_parameters")
    return rope if isinstance(rope, dict) else {}


FORMS = {
    "unknown legacy key": lambda hf: any(k in hf for k in hc.LEGACY_KEYS),
    "auto_map": lambda hf: "auto_map" in hf,
    "quantization_config": lambda hf: "quantization_config" in hf,
    "nested unknown dict": lambda hf: isinstance(hf.get("custom_settings"), dict),
    "null token id": lambda hf: "pad_token_id" in hf and hf["pad_token_id"] is None,
    "int rope_theta": lambda hf: isinstance(hf.get("rope_theta", _rope(hf).get("rope_theta")), int),
    "dtype beside torch_dtype": lambda hf: "dtype" in hf and "torch_dtype" in hf,
    "type beside rope_type": lambda hf: "type" in _rope(hf) and "rope_type" in _rope(hf),
    "eos as a list": lambda hf: isinstance(hf.get("eos_token_id"), list),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_llama_draws_every_form(form):
    assert reaches(strategies.for_architecture("llama").hf_configs(), FORMS[form]), form


@pytest.mark.parametrize("arch", strategies.architectures())
def test_every_architecture_draws_unknown_keys(arch):
    assert reaches(strategies.for_architecture(arch).hf_configs(),
                   lambda hf: "auto_map" in hf and any(k in hf for k in hc.LEGACY_KEYS))


def test_the_forms_shrink_away():
    """The minimal drawn config carries none of the forms (they are optional, absent first)."""
    minimal = find(strategies.for_architecture("llama").hf_configs(), lambda hf: True, settings=FIND)
    assert not any(check(minimal) for name, check in FORMS.items() if name != "null token id")
