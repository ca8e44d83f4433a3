"""Meta-tests of the gate runner (fixtures/gate.py) on a fake property module of our own.

The fake module mirrors tests/test_properties.py's shape (``test_<property>[<arch>]``, Hypothesis
either as ``@given`` or nested in the body) with one deliberately failing cell and one skipped
cell, and is run through the real runner: subprocess pytest, pytest-xdist workers, the convcheck
plugin loaded from its entry point, JUnit XML, matrix, Markdown summary, exit code.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from fixtures import budgets
from fixtures.gate import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, FAILED, PASSED, SKIPPED, format_matrix,
                           markdown_summary, minimal_example, parse_junit, run_gate)

FAKE_PROPERTIES = '''
import pytest
from hypothesis import given, strategies as st
from fixtures.profiles import settings_for

ARCHS = ["llama", "qwen2", "qwen2_moe"]


@pytest.mark.parametrize("arch", ARCHS)
@settings_for("config_roundtrip")
@given(x=st.integers(0, 1000))
def test_config_roundtrip(arch, x):
    assert arch != "qwen2" or x < 50, f"{arch}: x={x} broke the round trip"


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equivalence(arch):
    if arch == "qwen2_moe":
        pytest.skip("needs experts_implementation=eager")

    @settings_for("forward_equivalence")
    @given(st.integers())
    def inner(seed):
        pass

    inner()


def test_every_property_is_tested():
    pass


@pytest.mark.parametrize("arch,case", [])
def test_regression(arch, case):
    pass
'''


@pytest.fixture(scope="module")
def fake_suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake_gate")
    (root / "test_fake_properties.py").write_text(textwrap.dedent(FAKE_PROPERTIES))
    return root


@pytest.fixture(scope="module")
def full_run(fake_suite, tmp_path_factory):
    """One run over everything with 2 xdist workers (the CI shape)."""
    out = tmp_path_factory.mktemp("gate_out")
    stream = io.StringIO()
    code = run_gate(workers=2, junit_path=out / "junit.xml", summary_path=out / "summary.md",
                    test_path="test_fake_properties.py", cwd=fake_suite, stream=stream, quiet_pytest=True)
    return code, stream.getvalue(), out


def test_exit_code_is_one_on_a_failure(full_run):
    code, output, _ = full_run
    assert code == EXIT_FAILED, output


def test_matrix_cells_outcomes_and_examples_under_xdist(full_run):
    _, output, out = full_run
    result = parse_junit(out / "junit.xml")
    assert result.archs == ["llama", "qwen2", "qwen2_moe"]
    assert result.properties == ["config_roundtrip", "forward_equivalence"]
    cells = result.cells
    assert cells["llama", "config_roundtrip"].outcome == PASSED
    assert cells["qwen2", "config_roundtrip"].outcome == FAILED
    assert cells["qwen2_moe", "forward_equivalence"].outcome == SKIPPED
    # the gate budget, counted in the workers and carried back through the JUnit properties
    assert cells["llama", "config_roundtrip"].examples == budgets.examples("config_roundtrip", "gate")
    assert cells["llama", "forward_equivalence"].examples == budgets.examples("forward_equivalence", "gate")
    assert cells["qwen2_moe", "config_roundtrip"].examples == budgets.examples("config_roundtrip", "gate")
    assert all(c.seconds >= 0 for c in cells.values())
    # tests of no architecture are suite checks, outside the matrix
    assert set(result.suite) == {"every_property_is_tested", "regression"}
    assert result.suite["every_property_is_tested"].outcome == PASSED
    assert result.suite["regression"].outcome == SKIPPED
    per_property = result.per_property()
    assert per_property["forward_equivalence"]["examples"] == 2 * budgets.examples("forward_equivalence", "gate")


def test_printed_matrix_and_minimal_example(full_run):
    _, output, _ = full_run
    assert "architecture" in output and "config_roundtrip" in output
    assert "FAIL" in output and "PASS 100ex" in output and "skip" in output
    assert "FAILED qwen2 x config_roundtrip" in output
    assert "suite checks: every_property_is_tested PASS, regression skip" in output
    # derandomized and shrunk: the boundary value, with the reproduce_failure blob (print_blob)
    assert "x=50" in output
    assert "reproduce_failure" in output


def test_markdown_summary(full_run):
    _, _, out = full_run
    text = (out / "summary.md").read_text()
    assert text.startswith("## convcheck gate: ❌ failed")
    assert "| **qwen2** |" in text and "❌" in text and "✅ 100 ex" in text
    assert "⏭️ skip (needs experts_implementation=eager)" in text
    assert "### ❌ qwen2 × config_roundtrip" in text and "x=50" in text


def test_selection_is_exact(fake_suite, tmp_path):
    stream = io.StringIO()
    code = run_gate(archs=["qwen2_moe"], properties=["config_roundtrip"], workers=0,
                    junit_path=tmp_path / "j.xml", summary_path=tmp_path / "s.md",
                    test_path="test_fake_properties.py", cwd=fake_suite, stream=stream, quiet_pytest=True)
    assert code == EXIT_OK, stream.getvalue()
    result = parse_junit(tmp_path / "j.xml")
    assert list(result.cells) == [("qwen2_moe", "config_roundtrip")]  # "qwen2" is not a substring match


def test_nothing_selected_is_bad_input(fake_suite, tmp_path):
    stream = io.StringIO()
    code = run_gate(archs=["no_such_arch"], workers=0, junit_path=tmp_path / "j.xml", summary_path=None,
                    test_path="test_fake_properties.py", cwd=fake_suite, stream=stream, quiet_pytest=True)
    assert code == EXIT_USAGE
    assert "no test matched" in stream.getvalue()


def test_summary_goes_to_github_step_summary(fake_suite, tmp_path, monkeypatch):
    target = tmp_path / "step_summary.md"
    target.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    code = run_gate(archs=["llama"], properties=["forward_equivalence"], workers=0,
                    junit_path=tmp_path / "j.xml", summary_path=tmp_path / "unused.md",
                    test_path="test_fake_properties.py", cwd=fake_suite, stream=io.StringIO(), quiet_pytest=True)
    assert code == EXIT_OK
    text = target.read_text()
    assert text.startswith("earlier step\n") and "## convcheck gate: ✅ passed" in text
    assert not (tmp_path / "unused.md").exists()


# ------------------------------------------------------------------------- parser, offline inputs
JUNIT_WITHOUT_PROPERTIES = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
  <testcase classname="tests.test_properties" name="test_key_bijection[gemma2]" time="1.5"/>
  <testcase classname="tests.test_properties" name="test_key_bijection[phi3-cpu-float32]" time="0.5">
    <failure message="AssertionError: boom">E   AssertionError: boom
E   Falsifying example: check(
E       config=ModelConfig(hidden_size=8),
E       seed=0,
E   )</failure>
  </testcase>
  <testcase classname="tests.test_properties" name="test_key_bijection[phi3-cpu-float64]" time="0.25"/>
  <testcase classname="" name="tests.test_properties">
    <error message="collection failure">ImportError: cannot import name 'x'</error>
  </testcase>
</testsuite></testsuites>
"""


def test_parser_falls_back_to_test_ids_and_reports_collection_errors(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT_WITHOUT_PROPERTIES)
    result = parse_junit(path)
    assert set(result.cells) == {("gemma2", "key_bijection"), ("phi3", "key_bijection")}
    phi3 = result.cells["phi3", "key_bijection"]
    assert phi3.cases == 2 and phi3.outcome == FAILED and phi3.seconds == pytest.approx(0.75)
    assert phi3.examples is None
    assert result.cells["gemma2", "key_bijection"].outcome == PASSED
    assert result.errors and "ImportError" in result.errors[0][1]
    assert result.failed
    assert minimal_example(phi3.failures[0]) == (
        "Falsifying example: check(\n    config=ModelConfig(hidden_size=8),\n    seed=0,\n)")
    assert "PASS ?ex 1.5s" in format_matrix(result)
    assert "### error: `tests.test_properties`" in markdown_summary(result)


def test_minimal_example_without_hypothesis_output_shows_the_error_lines():
    text = "def test():\n>   assert 1 == 2\nE   assert 1 == 2\nE    +  where 2 = f()\n"
    assert minimal_example(text) == "assert 1 == 2\n +  where 2 = f()"


def test_a_truncated_junit_message_defers_to_the_body(tmp_path):
    body = ("E   AssertionError: boom\n"
            "Falsifying example: check(\n    config=1,\n    seed=2,\n)\n"
            "Explanation:\n    These lines were always and only run by failing test cases:\n        /x.py:1\n"
            "You can reproduce this example by temporarily adding @reproduce_failure('6', b'AA') as a decorator")
    xml = ('<testsuites><testsuite><testcase classname="t" name="test_p[a]" time="1">'
           '<failure message="AssertionError: boom&#10;Falsifying example: check(&#10;'
           '[+9 more lines; full report in element text]">' + body.replace("&", "&amp;").replace("<", "&lt;") +
           '</failure></testcase></testsuite></testsuites>')
    path = tmp_path / "j.xml"
    path.write_text(xml)
    (cell,) = parse_junit(path).cells.values()
    assert minimal_example(cell.failures[0]) == (
        "Falsifying example: check(\n    config=1,\n    seed=2,\n)\n"
        "Explanation:\n    These lines were always and only run by failing test cases:\n        /x.py:1\n"
        "You can reproduce this example by temporarily adding @reproduce_failure('6', b'AA') as a decorator")
