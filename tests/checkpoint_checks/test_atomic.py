"""checkpoints.atomic: the one atomic-output-directory helper (used by native and HF writers)."""
from __future__ import annotations

import os

import pytest

from checkpoints import atomic
from checkpoints.atomic import atomic_directory


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_commit_fsyncs_every_file_and_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVCHECK_FSYNC", "1")
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_text("b")
    names = {os.path.basename(p) for p in synced}
    assert {"a", "b", "sub"} <= names and str(tmp_path) in synced  # files, their dirs, and the parent
    assert (tmp_path / "out" / "sub" / "b").read_text() == "b" and leftovers(tmp_path) == []


def test_fsync_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: pytest.fail("fsync called"))
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "out" / "a").is_file()


def test_temp_dir_is_a_hidden_sibling_and_removed_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_directory(tmp_path / "out") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
            (tmp / "partial").write_text("x")
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_refuse_then_overwrite_file_or_directory(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(tmp_path / "out"):
            pytest.fail("the body must not run")

    class Refused(ValueError):
        pass

    with pytest.raises(Refused):
        with atomic_directory(tmp_path / "out", error=Refused):
            pass
    with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert (tmp_path / "out" / "new").read_text() == "new" and leftovers(tmp_path) == []


def test_destination_appearing_during_the_write_is_not_clobbered(tmp_path):
    with pytest.raises(FileExistsError, match="appeared"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "mine").write_text("x")
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "theirs").write_text("y")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs"] and leftovers(tmp_path) == []


def test_failed_swap_puts_the_old_one_back(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):
            raise OSError("injected")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # the fallback swap (no RENAME_EXCHANGE)
    with pytest.raises(OSError, match="injected"):
        with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "new").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old"] and leftovers(tmp_path) == []


def test_parents_created(tmp_path):
    with atomic_directory(tmp_path / "a" / "b" / "out") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "a" / "b" / "out" / "x").is_file()


def test_overwrite_is_one_atomic_exchange_on_linux(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    calls = []
    real = atomic.exchange
    monkeypatch.setattr(atomic, "exchange", lambda a, b: calls.append((a, b)) or real(a, b))
    monkeypatch.setattr(atomic.os, "rename", lambda *a: pytest.fail("the exchange needs no rename"))
    with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    if atomic._renameat2 is None:
        pytest.skip("no renameat2 on this system")
    assert len(calls) == 1 and [p.name for p in (tmp_path / "out").iterdir()] == ["new"]
    assert leftovers(tmp_path) == []


def _dead_pid() -> int:
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_kill_between_the_fallback_renames_is_recovered_by_the_next_run(tmp_path):
    """The fallback swap renames the old output away, then the new one in; a SIGKILL between the
    two leaves no ``out`` but a complete ``.out.old-*``. The next write to ``out`` puts it back."""
    pid = _dead_pid()
    old = tmp_path / f".out.old-{atomic._HOST}-{pid}-abcd"
    old.mkdir()
    (old / "weights").write_text("old")
    stale = tmp_path / f".out.tmp-{atomic._HOST}-{pid}-xyz"  # the killed run's half-written output
    stale.mkdir()
    (stale / "partial").write_text("x")
    with pytest.raises(FileExistsError):  # recovered first, so a plain write is refused again
        with atomic_directory(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "weights").read_text() == "old" and leftovers(tmp_path) == []


def test_leftovers_of_live_or_foreign_writers_are_not_touched(tmp_path):
    mine = tmp_path / f".out.tmp-{atomic._HOST}-{os.getpid()}-live"  # this process: alive
    foreign = tmp_path / ".out.tmp-0123abcd-1-zz"  # another host
    legacy = tmp_path / ".out.old-q1w2"  # another naming scheme
    for p in (mine, foreign, legacy):
        p.mkdir()
    atomic.recover(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, foreign, legacy))


def test_recover_removes_old_output_once_the_new_one_is_in_place(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "new").write_text("new")
    old = tmp_path / f".out.old-{atomic._HOST}-{_dead_pid()}-abcd"
    old.mkdir()
    atomic.recover(tmp_path / "out")
    assert leftovers(tmp_path) == [] and (tmp_path / "out" / "new").is_file()


def test_an_interrupt_just_after_the_temp_dir_is_made_leaves_nothing(tmp_path, monkeypatch):
    """A SIGINT landing between making the temporary directory and the cleanup's ``try`` (seen in
    CI: a ``.out.tmp-*`` left by a conversion interrupted 20 ms in)."""
    real = os.mkdir

    def interrupted(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if ".tmp-" in os.fspath(path):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "mkdir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "out"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []
