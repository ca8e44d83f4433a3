"""The top-level packages depend one way, so none imports another that imports it back:

    native ← converters ← checkpoints
    native, converters ← strategies
    native, converters, checkpoints, (fixtures.tolerances) ← properties
    all of them ← fixtures (the pytest plugin and the commands that run the laws)

``properties`` reads its tolerances from ``fixtures/tolerances.py`` (the one place they are
documented), a module that imports nothing of ours, and nothing else of ``fixtures``. Every import
counts, module-level or inside a function."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"native", "converters", "checkpoints", "strategies", "properties", "fixtures"}
ALLOWED = {
    "native": set(),
    "converters": {"native"},
    "checkpoints": {"native", "converters"},
    "strategies": {"native", "converters"},
    "properties": {"native", "converters", "checkpoints", "fixtures.tolerances"},
    "fixtures": {"native", "converters", "checkpoints", "strategies", "properties"},
}
LEAVES = {"fixtures/tolerances.py"}  # modules a lower package may import: they import nothing of ours


def imported_names(path: Path) -> set[str]:
    """The dotted names of our packages a module imports (``from fixtures import tolerances`` is
    ``fixtures.tolerances``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in OURS}


def allowed(package: str, name: str) -> bool:
    top = name.split(".")[0]
    return top == package or top in ALLOWED[package] or any(
        name == entry or name.startswith(entry + ".") for entry in ALLOWED[package])


def wrong_imports(package: str) -> dict[str, list[str]]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = sorted(name for name in imported_names(path) if not allowed(package, name))
        if wrong:
            found[str(path.relative_to(ROOT))] = wrong
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_packages_below_it(package):
    wrong = wrong_imports(package)
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}: {wrong}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_a_module_lower_packages_import_imports_nothing_of_ours(leaf):
    assert not imported_names(ROOT / leaf), f"{leaf} is imported from below its package: it must stay a leaf"


def test_the_layering_check_rejects_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a strategies module importing properties is reported."""
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "bad.py").write_text("def f():\n    from properties import common\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert wrong_imports("strategies") == {"strategies/bad.py": ["properties.common"]}
