"""Import the project's packages, and load the convcheck pytest plugin exactly once.

**Imports.** ``tests/native`` and ``tests/strategies`` share their names with the ``native`` and
``strategies`` packages. pytest (default "prepend" import mode) puts ``tests/`` on ``sys.path`` for
this conftest, so when the repository root is not on ``sys.path`` as well (the ``pytest`` console
script, unlike ``python -m pytest``, does not add the working directory), ``import native`` finds the
*test folder* as a namespace package before the editable install's finder is asked. The root is
therefore put first on ``sys.path`` here, so the real packages always win.

**Plugin.**
When convcheck is installed (``pip install -e .``), pytest loads ``fixtures.plugin`` itself through
the ``pytest11`` entry point, and naming it again here would register the module twice (a pluggy
error). So this conftest names it only when that entry point cannot load: convcheck not installed,
or plugin autoloading disabled with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)

PLUGIN = "fixtures.plugin"


def _autoloaded() -> bool:
    if PLUGIN in sys.modules:  # already loaded (entry point, or ``-p convcheck``)
        return True
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))


pytest_plugins = [] if _autoloaded() else [PLUGIN]
