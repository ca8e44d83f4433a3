"""The top-level packages depend one way: ``native`` on nothing of ours, ``converters`` on
``native``, ``checkpoints`` on both. Every import counts, module-level or inside a function."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"native", "converters", "checkpoints", "strategies", "properties", "fixtures"}
ALLOWED = {"native": set(), "converters": {"native"}, "checkpoints": {"native", "converters"}}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Our top-level packages each module of ``package`` imports, by module path."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in OURS and top != package:
                    found.setdefault(str(path.relative_to(ROOT)), set()).add(top)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_packages_below_it(package):
    wrong = {module: sorted(tops - ALLOWED[package]) for module, tops in imported_packages(package).items()
             if tops - ALLOWED[package]}
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}: {wrong}"
