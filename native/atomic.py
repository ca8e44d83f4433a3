"""Atomic output directories: a checkpoint appears at its destination complete, or not at all.

One helper for every writer (native checkpoints here, HF directories in ``converters.hf_io``):
the body writes into a temporary sibling ``.{name}.tmp-XXXX`` (same parent, hence same file
system, so the final ``rename`` is atomic); on success every file is fsynced and the directory is
renamed into place; on any exception (KeyboardInterrupt included) the temporary directory is
removed and the exception propagates.

``CONVCHECK_FSYNC=0`` in the environment skips the fsyncs (test suites writing hundreds of small
checkpoints to throwaway directories); the rename stays atomic, only durability across a power
loss is given up.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def fsync_enabled() -> bool:
    return os.environ.get("CONVCHECK_FSYNC", "1").strip() != "0"


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (directories last, so entries are durable)."""
    if not fsync_enabled():
        return
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    if not fsync_enabled():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Best effort: the new directory is already in place, so a leftover is not a failure."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


@contextmanager
def atomic_directory(dst: str | os.PathLike, *, overwrite: bool = False,
                     error: Callable[[str], Exception] = FileExistsError) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``dst`` when the block exits normally.

    An existing ``dst`` is refused with ``error(message)`` unless ``overwrite=True``; then the old
    one is renamed away, the new one renamed in, and the old one deleted (if the second rename
    fails the old one is put back). The existence check runs both before the body and just before
    the rename: two concurrent writers to the same ``dst`` are not otherwise coordinated.
    """
    dst = Path(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    name = dst.name
    if not name:
        raise error(f"{dst}: not a usable destination directory name")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise error(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    try:
        yield tmp
        fsync_tree(tmp)
        _commit(tmp, dst, parent, overwrite, error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, dst: Path, parent: Path, overwrite: bool, error: Callable[[str], Exception]) -> None:
    exists = dst.exists() or dst.is_symlink()
    if exists and not overwrite:
        raise error(f"{dst} appeared while it was being written; refusing to overwrite it")
    if not exists:
        os.rename(tmp, dst)  # an empty directory created meanwhile would be replaced: accepted
        fsync_dir(parent)
        return
    old = parent / f".{dst.name}.old-{secrets.token_hex(4)}"
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    fsync_dir(parent)
    _remove(old)
