"""The gate: every property of DESIGN §3 for every registered converter, plus every saved case.

Test ids are ``test_<property>[<model_type>]``. Nothing here is per architecture: a converter in
the registry and its ``strategies/<model_type>.py`` are all it takes to be checked (see
``properties.runner``). The example budget of each property comes from the active profile
(``--convcheck-profile`` / ``$CONVCHECK_PROFILE``; fixtures/budgets.py).
"""
from __future__ import annotations

import pytest

import converters
from fixtures.regressions import load_regressions
from properties import runner

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


@arch
def test_checkpoint_roundtrip(arch):
    check("checkpoint_roundtrip", arch)


REGRESSIONS = load_regressions()


@pytest.mark.parametrize("arch,case", [pytest.param(c.architecture, c, id=c.id) for c in REGRESSIONS])
def test_regression(arch, case):
    """Every ``tests/regressions/*.json`` case, replayed exactly (config and seed)."""
    runner.replay(case)


def test_every_property_is_tested():
    """This module has one test per property of properties.PROPERTIES (none forgotten)."""
    from properties import PROPERTIES

    missing = [name for name in PROPERTIES if f"test_{name}" not in globals()]
    assert not missing, f"properties without a test here: {missing}"
