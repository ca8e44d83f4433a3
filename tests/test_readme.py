"""The README opens with the two set-up-and-run commands, and .ci/run runs the second verbatim."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_gate_and_test_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    gate, tests = commands
    assert gate.endswith("convcheck gate") and "torch==2.13.0" in gate
    assert "pytest" in tests and "torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
