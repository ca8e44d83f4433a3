"""Load the convcheck pytest plugin exactly once.

(The test folders are named so that none shadows a package: ``tests/native_checks`` and not
``tests/native``, since pytest's default "prepend" import mode puts ``tests/`` on ``sys.path`` and a
folder named like a package would be imported in its place.)

When convcheck is installed (``pip install -e .``), pytest loads ``fixtures.plugin`` itself through
the ``pytest11`` entry point, and naming it again here would register the module twice (a pluggy
error). So this conftest names it only when that entry point cannot load: convcheck not installed,
or plugin autoloading disabled with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

PLUGIN = "fixtures.plugin"


def _autoloaded() -> bool:
    if PLUGIN in sys.modules:  # already loaded (entry point, or ``-p convcheck``)
        return True
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))


pytest_plugins = [] if _autoloaded() else [PLUGIN]
