"""Meta-tests of the pytest plugin (fixtures/plugin.py), the profiles and the budgets."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from fixtures import budgets, profiles, rng
from fixtures.plugin import CheckpointDirs, GPU_SKIP_REASON

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------- profiles
def test_profiles_are_registered_as_designed():
    gate = settings.get_profile("gate")
    assert gate.derandomize and gate.database is None and gate.deadline is None and gate.print_blob
    assert HealthCheck.too_slow in gate.suppress_health_check
    assert HealthCheck.data_too_large not in gate.suppress_health_check
    nightly = settings.get_profile("nightly")
    assert isinstance(nightly.database, DirectoryBasedExampleDatabase) and nightly.deadline is None
    assert nightly.max_examples >= 1000 and not nightly.derandomize
    assert settings.get_profile("fuzz").max_examples == nightly.max_examples
    assert tuple(settings.get_profile("replay").phases) == (Phase.explicit,)
    dev = settings.get_profile("dev")
    assert dev.max_examples == 10 and dev.deadline is None


def test_loading_a_profile_never_inherits_the_previous_one():
    before = profiles.active()
    try:
        profiles.load("replay")
        assert tuple(settings.default.phases) == (Phase.explicit,)
        profiles.load("dev")
        assert Phase.generate in settings.default.phases and settings.default.max_examples == 10
        assert Phase.generate in settings.get_profile("gate").phases
    finally:
        profiles.load(before)


def test_settings_for_uses_the_budget_table():
    for prop in budgets.PROPERTY_CLASSES:
        assert profiles.settings_for(prop, "gate").max_examples == budgets.examples(prop, "gate")
        assert profiles.settings_for(prop, "gate").derandomize
    assert profiles.settings_for("forward_equivalence", "nightly").max_examples == 1000
    assert tuple(profiles.settings_for("config_roundtrip", "replay").phases) == (Phase.explicit,)
    with pytest.raises(KeyError, match="no budget"):
        profiles.settings_for("made_up_property", "gate")
    with pytest.raises(ValueError, match="unknown convcheck profile"):
        profiles.settings_for("config_roundtrip", "fast")


def test_gate_budgets_meet_the_issue_minimums():
    for prop, cls in budgets.PROPERTY_CLASSES.items():
        assert budgets.examples(prop, "gate") >= budgets.GATE_MINIMUM[cls]
    assert budgets.GATE_MINIMUM == {budgets.CONFIG: 100, budgets.WEIGHTS: 25}


def test_every_property_of_the_suite_is_budgeted():
    properties = pytest.importorskip("properties")
    names = getattr(properties, "PROPERTIES", None)
    if not names:
        pytest.skip("properties.PROPERTIES not defined yet")
    assert set(names) == set(budgets.PROPERTY_CLASSES)


def test_profile_resolution(monkeypatch):
    monkeypatch.delenv(profiles.ENV_PROFILE, raising=False)
    assert profiles.resolve() == "dev"
    monkeypatch.setenv(profiles.ENV_PROFILE, "gate")
    assert profiles.resolve() == "gate" and profiles.resolve("replay") == "replay"
    monkeypatch.setenv(profiles.ENV_PROFILE, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        profiles.resolve()


# ------------------------------------------------------------------------------ fixtures in-process
def test_device_is_cpu_or_cuda(device):
    assert device in ("cpu", "cuda")
    torch.zeros(1, device=device)


def test_dtype_and_tolerance(dtype, tolerance):
    assert dtype in (torch.float64, torch.float32)
    assert tolerance.dtype == str(dtype).removeprefix("torch.")


def test_tmp_checkpoint_dirs(tmp_checkpoint_dir):
    assert isinstance(tmp_checkpoint_dir, CheckpointDirs)
    a, b = tmp_checkpoint_dir(), tmp_checkpoint_dir("hf")
    assert a != b and a.is_dir() and not any(a.iterdir()) and b.name.startswith("hf-")
    with tmp_checkpoint_dir.scoped() as c:
        (c / "x").write_text("1")
    assert not c.exists()


@pytest.mark.gpu
def test_gpu_marker_runs_only_with_cuda():
    assert torch.cuda.is_available()


# ------------------------------------------------------------------------------------- randomness
def test_torch_global_rng_is_seeded_before_every_example():
    first_draws: list[float] = []

    @settings(max_examples=5, database=None, deadline=None)
    @given(st.integers())
    def inner(_):
        # registered with Hypothesis: every example starts from the same global state (seed 0)
        first_draws.append(torch.rand(()).item())
        torch.rand(100)  # consuming it must not leak into the next example

    inner()
    assert len(first_draws) == 5 and len(set(first_draws)) == 1
    state = torch.get_rng_state()
    torch.manual_seed(0)
    expected = torch.rand(()).item()
    torch.set_rng_state(state)
    assert first_draws[0] == expected


def test_global_rng_is_restored_after_a_test():
    state = torch.get_rng_state()

    @settings(max_examples=3, database=None)
    @given(st.integers())
    def inner(_):
        torch.rand(10)

    inner()
    assert torch.equal(torch.get_rng_state(), state)


@settings(max_examples=10, database=None, deadline=None)
@given(rng.seeds())
def test_a_drawn_seed_rebuilds_the_same_tensors(seed):
    a = torch.randn(3, 4, generator=rng.generator(seed), dtype=torch.float64)
    b = torch.randn(3, 4, generator=rng.generator(seed), dtype=torch.float64)
    assert torch.equal(a, b)


def test_register_torch_rng_is_idempotent():
    assert rng.register_torch_rng() and rng.register_torch_rng()


def test_torch_threads_are_pinned_for_reproducible_reductions():
    expected = int(os.environ.get(rng.ENV_THREADS) or 1)
    assert torch.get_num_threads() == expected


# ------------------------------------------------------------------------------ in a fresh pytest
PROBE = '''
import os, pytest
from hypothesis import settings

def test_profile(convcheck_profile):
    with open(os.environ["PROBE_OUT"], "w") as fh:
        fh.write(f"{convcheck_profile} {settings.default.max_examples} {settings.default.derandomize}")

def test_device(device):
    pass

@pytest.mark.gpu
def test_gpu():
    pass

@pytest.mark.parametrize("arch", ["qwen2", "qwen2_moe"])
def test_config_roundtrip(arch):
    pass
'''


def _pytest(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST", "CONVCHECK_"))}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env={**clean, **(env or {})}, text=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    (root / "test_probe.py").write_text(textwrap.dedent(PROBE))
    return root


@pytest.mark.parametrize("env, args, expected", [
    ({"CI": ""}, (), "dev 10 False"),
    ({"CI": "true"}, (), "dev 10 True"),  # derandomized under CI: reproducible CI results
    ({"CONVCHECK_PROFILE": "gate"}, (), "gate 100 True"),
    ({"CONVCHECK_PROFILE": "gate"}, ("--convcheck-profile", "nightly"), "nightly 5000 False"),
])
def test_profile_selection_in_a_fresh_session(probe, env, args, expected):
    out = probe / "probe.txt"
    result = _pytest(probe, "test_probe.py::test_profile", *args, env={**env, "PROBE_OUT": str(out)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_text() == expected


def test_gpu_skips_carry_their_reason(probe):
    result = _pytest(probe, "test_probe.py", "-k", "device or gpu", "-rs")
    assert result.returncode == 0, result.stdout
    if not torch.cuda.is_available():
        # device[cuda] and test_gpu, folded by -rs into one line with their shared reason
        assert "SKIPPED [2] " in result.stdout and f": {GPU_SKIP_REASON}" in result.stdout, result.stdout
        assert "1 passed, 2 skipped" in result.stdout


def test_selection_options_match_exactly(probe):
    result = _pytest(probe, "test_probe.py", "--convcheck-arch", "qwen2", "--convcheck-property",
                     "config_roundtrip", "-v")
    assert "test_config_roundtrip[qwen2] PASSED" in result.stdout
    assert "qwen2_moe" not in result.stdout.replace("deselected", "")
    assert "1 passed, 5 deselected" in result.stdout


@pytest.mark.parametrize("autoload", ["", "1"])
def test_the_plugin_loads_once_with_and_without_autoload(autoload):
    env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": autoload} if autoload else {}
    result = _pytest(ROOT, "tests/fixtures_meta/test_regression_files.py", "--co", "-q",
                     "--convcheck-profile", "gate", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_save_and_load_round_trip" in result.stdout
