"""Power at low precision: every single converter bug fails forward_equivalence in
bfloat16 (and float16) under the derived tolerance, on CPU here and on CUDA when present.

- ``test_bug_margin``: fixed small configs that exercise each bug (tests/meta/low_precision.py);
  the bug's error exceeds the tolerance forward_equivalence applies, with margin > 2.
- ``test_broken_converter_fails_in_low_precision``: forward_equivalence itself, run as in the gate
  (gate profile budget, explicit examples first) but in bfloat16 only, rejects each broken converter
  of the forward_equivalence meta-tests, plus the bias dropped and rope scaling dropped on export.
"""
from __future__ import annotations

import pytest
from hypothesis import Phase, settings

from fixtures import profiles
from properties import PropertyViolation, forward_equivalence
from fixtures import runner

from . import broken
from .low_precision import BUGS, measure
from .test_broken_converters import CASES


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name.split(" ")[0])
def test_bug_margin(bug, dtype):
    cell = measure(bug, dtype)
    assert cell.margin > 2, (f"{bug.name} in {dtype}: error {cell.error:.3e} vs tolerance {cell.tolerance:.3e} "
                             f"(margin {cell.margin:.2f})")


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name.split(" ")[0])
def test_fixed_config_fails_forward_equivalence_in_bf16(bug):
    with pytest.raises(PropertyViolation) as info:
        forward_equivalence(bug.converter(), bug.config(), 0, dtypes=("bfloat16",))
    message = str(info.value)
    assert "bfloat16" in message and "divergence" in message, message


def test_bias_dropped_fails_in_bf16():
    """The real BiasDropped (tensor omitted) fails too: HF reports the missing key."""
    cfg = BUGS[2].config()
    with pytest.raises(PropertyViolation):
        forward_equivalence(broken.BiasDropped(), cfg, 0, dtypes=("bfloat16",))


def gate_bf16_settings() -> settings:
    return settings(profiles.settings_for("forward_equivalence", "gate"),
                    phases=(Phase.explicit, Phase.reuse, Phase.generate))


FORWARD_CASES = [(bug, make) for bug, make, prop in CASES if prop == "forward_equivalence"]


@pytest.mark.parametrize("bug,make", [pytest.param(*c, id=c[0]) for c in FORWARD_CASES])
def test_broken_converter_fails_in_low_precision(bug, make):
    converter = make()
    with pytest.raises(PropertyViolation) as info:
        runner.hypothesis_test("forward_equivalence", converter, settings=gate_bf16_settings(),
                               kwargs={"dtypes": ("bfloat16",)})()
    assert info.value.property == "forward_equivalence"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name.split(" ")[0])
def test_bug_fails_on_cuda(bug, dtype):
    with pytest.raises(PropertyViolation):
        forward_equivalence(bug.converter(), bug.config(), 0, device="cuda", dtypes=(dtype,))


def test_correct_converters_pass_the_same_configs_in_bf16():
    """The same configs with the correct converters pass: the power is not a false alarm."""
    from converters.gemma import GemmaConverter
    from converters.llama import LlamaConverter
    from converters.mistral import MistralConverter

    right = {"llama": LlamaConverter, "gemma": GemmaConverter, "mistral": MistralConverter}
    for bug in BUGS:
        forward_equivalence(right[bug.model_type](), bug.config(), 0, dtypes=("bfloat16", "float16"))
