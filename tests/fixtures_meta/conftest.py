"""Fixtures shared by the meta-tests of convcheck's commands."""
from __future__ import annotations

import pytest

from fixtures import regressions


@pytest.fixture
def regression_dir(tmp_path, monkeypatch):
    """Saved cases and the nightly example database go to a temporary folder, not the repository."""
    monkeypatch.setattr(regressions, "REGRESSIONS_DIR", tmp_path / "regressions")
    monkeypatch.setenv("CONVCHECK_DATABASE", str(tmp_path / "db"))
    from fixtures import profiles

    before = profiles.active()
    yield tmp_path / "regressions"
    profiles.load(before)  # fuzz/replay load their own profile process-wide
    assert not (tmp_path / "db").exists() or (tmp_path / "db").is_dir()
