"""Atomic output directories: a checkpoint appears at its destination complete, or not at all.

One helper for every writer (native checkpoints here, HF directories in ``checkpoints.hf_writer``):
the body writes into a temporary sibling ``.{name}.tmp-{host}-{pid}-{random}`` (same parent, hence
same file system, so the final ``rename`` is atomic); on success every file is fsynced and the
directory is renamed into place; on any exception (KeyboardInterrupt included) the temporary
directory is removed and the exception propagates.

Kill safety (SIGKILL, power loss: no cleanup code runs). At every instant the destination holds
either nothing/the previous output, or the complete new output:

- New destination: one ``rename(tmp, dst)``. Before it, ``dst`` does not exist; after it, ``dst``
  is complete.
- ``overwrite=True`` on Linux: ``renameat2(tmp, dst, RENAME_EXCHANGE)`` swaps the two directories
  in one atomic step; the old output, now under the temporary name, is removed afterwards. A kill
  before the swap leaves the old output at ``dst``; after it, the new one.
- ``overwrite=True`` where the exchange is unavailable (another OS, a file system refusing it):
  ``rename(dst, .{name}.old-{host}-{pid}-{random})``, ``rename(tmp, dst)``, remove the old one.
  A kill between the two renames leaves no ``dst`` but the complete old output beside it; the
  **next** :func:`atomic_directory` call for the same ``dst`` (any convert to it) puts it back
  first (:func:`recover`). Recovery can also be done by hand: rename the ``.{name}.old-*``
  directory back to ``{name}``.

Leftovers of killed runs (``.tmp-`` and ``.old-`` siblings) are removed by the next call for the
same destination once the process that made them is gone (same host, pid no longer running).

``CONVCHECK_FSYNC=0`` in the environment skips the fsyncs (test suites writing hundreds of small
checkpoints to throwaway directories); the renames stay atomic, only durability across a power
loss is given up.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import signal
import socket
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


# ------------------------------------------------------------------------ the atomic exchange
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _renameat2 = None


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``). Returns False
    when the system or file system does not offer it (the caller falls back); raises OSError on a
    real failure."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


# ------------------------------------------------------------------- leftovers of killed runs
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _owner_tag() -> str:
    return f"{_HOST}-{os.getpid()}-"


def _dead_owner(entry: Path, kind: str, name: str) -> bool:
    """True when ``entry`` (``.{name}.{kind}-{host}-{pid}-...``) was made on this host by a process
    that no longer runs. Entries in another naming scheme, or from another host, are left alone."""
    rest = entry.name[len(f".{name}.{kind}-"):]
    parts = rest.split("-")
    if len(parts) < 3 or parts[0] != _HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


def recover(dst: str | os.PathLike) -> None:
    """Finish what a killed writer to ``dst`` left: put an old output back when ``dst`` is missing
    (a kill between the two renames of the fallback swap), and remove stale temporary and old
    siblings. Only entries whose owning process is gone are touched. Called by
    :func:`atomic_directory` before it writes."""
    dst = Path(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        return
    name = dst.name
    olds = sorted((p for p in parent.glob(f".{glob_escape(name)}.old-*") if _dead_owner(p, "old", name)),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    if olds and not (dst.exists() or dst.is_symlink()):
        os.rename(olds.pop(0), dst)
        fsync_dir(parent)
    for old in olds:
        _remove(old)
    for tmp in parent.glob(f".{glob_escape(name)}.tmp-*"):
        if _dead_owner(tmp, "tmp", name):
            _remove(tmp)


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


# ----------------------------------------------------------------------------- the directory
@contextmanager
def atomic_directory(dst: str | os.PathLike, *, overwrite: bool = False,
                     error: Callable[[str], Exception] = FileExistsError) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``dst`` when the block exits normally.

    An existing ``dst`` is refused with ``error(message)`` unless ``overwrite=True``; then the old
    one is atomically exchanged with the new one and deleted (see the module docstring for the
    fallback and its recovery). The existence check runs both before the body and just before the
    rename: two concurrent writers to the same ``dst`` are not otherwise coordinated.
    """
    dst = Path(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    name = dst.name
    if name in ("", ".", ".."):
        raise error(f"{dst}: not a usable destination directory name")
    try:
        recover(dst)
        exists = dst.exists() or dst.is_symlink()
    except OSError as exc:
        raise error(f"{dst}: cannot create the output there ({_reason(exc)})") from None
    if exists and not overwrite:
        raise error(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
    # The name is chosen before the directory exists and the directory is made inside the ``try``,
    # so an interrupt at any instant either finds nothing to remove or removes what was made.
    tmp = parent / f".{name}.tmp-{_owner_tag()}{secrets.token_hex(8)}"
    try:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(tmp, 0o700)
        except OSError as exc:
            raise error(f"{dst}: cannot create the output there ({_reason(exc)})") from None
        yield tmp
        fsync_tree(tmp)
        with _signals_deferred():
            _commit(tmp, dst, parent, overwrite, error)
    except OSError as exc:  # a full disk, a read-only or vanished destination: one line, nothing left
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, type) and isinstance(exc, error):
            raise
        raise error(f"{dst}: writing the output failed ({_reason(exc)}); nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reason(exc: OSError) -> str:
    """``strerror`` and the file it concerns, without a traceback's worth of detail."""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the output is put in place (a few renames): an interrupt
    then lands before or after the commit, never half-way through it with the old output still
    under the temporary name."""
    signals = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - platforms without it
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _commit(tmp: Path, dst: Path, parent: Path, overwrite: bool, error: Callable[[str], Exception]) -> None:
    exists = dst.exists() or dst.is_symlink()
    if exists and not overwrite:
        raise error(f"{dst} appeared while it was being written; refusing to overwrite it")
    if not exists:
        os.rename(tmp, dst)  # an empty directory created meanwhile would be replaced: accepted
        fsync_dir(parent)
        return
    if dst.is_dir() and not dst.is_symlink() and exchange(tmp, dst):
        fsync_dir(parent)
        _remove(tmp)  # holds the old output now
        return
    old = parent / f".{dst.name}.old-{_owner_tag()}{secrets.token_hex(4)}"
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    fsync_dir(parent)
    _remove(old)
