"""The gate: every property of DESIGN §3 for every registered converter, plus every saved case.

Test ids are ``test_<property>[<model_type>]``. Nothing here is per architecture: a converter in
the registry and its ``strategies/<model_type>.py`` are all it takes to be checked (see
``fixtures.runner``). The example budget of each property comes from the active profile
(``--convcheck-profile`` / ``$CONVCHECK_PROFILE``; fixtures/budgets.py).
"""
from __future__ import annotations

import pytest

import converters
from fixtures.regressions import load_regressions
from fixtures import runner

ARCHS = converters.names()
arch = pytest.mark.parametrize("arch", ARCHS)


def check(name: str, model_type: str) -> None:
    runner.hypothesis_test(name, converters.get(model_type))()


@arch
def test_config_roundtrip(arch):
    check("config_roundtrip", arch)


@arch
def test_hf_config_roundtrip(arch):
    check("hf_config_roundtrip", arch)


@arch
def test_hf_config_accepted(arch):
    check("hf_config_accepted", arch)


@arch
def test_architecture_coverage(arch):
    check("architecture_coverage", arch)


@arch
def test_unrepresentable_rejected(arch):
    check("unrepresentable_rejected", arch)


@arch
def test_weight_roundtrip(arch):
    check("weight_roundtrip", arch)


@arch
def test_key_bijection(arch):
    check("key_bijection", arch)


@arch
def test_tied_embeddings(arch):
    check("tied_embeddings", arch)


@arch
def test_bias_handling(arch):
    check("bias_handling", arch)


@arch
def test_forward_equivalence(arch):
    check("forward_equivalence", arch)


#: forward_equivalence's reduced-precision columns. CPU float64/float32 stay the default
#: columns above; these use the derived tolerance (fixtures.tolerances.derived_tolerance). The CUDA
#: columns are marked ``gpu``: skipped with "CUDA not available" when there is none, never failed.
PRECISION_COLUMNS = [
    pytest.param("cpu", "bfloat16", id="cpu-bfloat16"),
    pytest.param("cpu", "float16", id="cpu-float16"),
    *[pytest.param("cuda", d, marks=pytest.mark.gpu, id=f"cuda-{d}") for d in ("bfloat16", "float16", "float32")],
]


@arch
@pytest.mark.parametrize("device,dtype", PRECISION_COLUMNS)
def test_forward_equivalence_precision(arch, device, dtype):
    from hypothesis import settings

    from fixtures import budgets, profiles

    base = profiles.settings_for("forward_equivalence")
    n = budgets.precision_examples(device, profiles.resolve(profiles.active()))
    runner.hypothesis_test("forward_equivalence", converters.get(arch), settings=settings(base, max_examples=n),
                           kwargs={"device": device, "dtypes": (dtype,)})()


@arch
def test_checkpoint_roundtrip(arch):
    check("checkpoint_roundtrip", arch)


REGRESSIONS = load_regressions()


@pytest.mark.parametrize("arch,case", [pytest.param(c.architecture, c, id=c.id) for c in REGRESSIONS])
def test_regression(arch, case):
    """Every ``tests/regressions/*.json`` case, replayed exactly (config and seed)."""
    runner.replay(case)
