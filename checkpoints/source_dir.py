"""A checkpoint directory read as untrusted input.

People convert checkpoints they downloaded, so a source directory is hostile until proven
otherwise. :class:`SourceDir` is the one way the readers touch it:

- **Nothing from outside.** Every path is relative to the directory and read through the
  directory's own descriptor, one component at a time without following symbolic links. A link
  that resolves inside the directory is followed; one that leads outside it (``/proc/self/environ``,
  a private key, another checkpoint) is refused with a message naming it, unless the caller opts
  in (``follow_symlinks=True``, the CLI's ``--follow-symlinks``).
- **No special files.** A FIFO, device or socket is refused before it is opened (it is never
  opened for a blocking read: a FIFO as ``config.json`` would hang the reader forever).
- **One version of every file.** Each file is opened once and kept open for the reader's
  lifetime; every later read (memory maps, ``torch.load``, kernel copies) goes through that
  descriptor, by ``/proc/self/fd/N`` where a consumer needs a path. A checkpoint replaced while it
  is being converted (``--overwrite`` by another run) is then read wholly as the version that was
  opened: the old files stay readable while held, and a file unlinked before it could be opened
  is an error, never a silent mix of versions.
"""
from __future__ import annotations

import json
import os
import resource
import stat
import weakref
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from native.schema import nonfinite_path

#: bytes read from a JSON file at most (configs and indexes are kilobytes; a 1M-tensor index ~100 MB)
MAX_JSON_BYTES = 256 * 2**20
#: nesting depth of a JSON document at most (real configs nest 3 or 4 levels)
MAX_JSON_DEPTH = 64

_PROC_FD = Path("/proc/self/fd")
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


def special_kind(mode: int) -> str | None:
    """``"a FIFO"`` and the like for a special file's mode; None for a regular file or directory."""
    return _KINDS.get(stat.S_IFMT(mode))


class SourceDir:
    """The directory ``path``, pinned by a descriptor, with its files opened once (see the module
    docstring). ``error(message)`` builds the exception every refusal raises (the caller's own
    refusal type)."""

    def __init__(self, path: str | os.PathLike, *, follow_symlinks: bool = False,
                 error: Callable[[str], Exception] = ValueError):
        self.path = Path(path)
        self.follow_symlinks = follow_symlinks
        self.error = error
        try:
            mode = os.stat(self.path).st_mode
        except OSError as exc:
            raise error(f"{self.path}: {exc.strerror.lower() if exc.strerror else exc}") from None
        if not stat.S_ISDIR(mode):
            raise error(f"{self.path}: not a directory")
        self.real = Path(os.path.realpath(self.path))
        self.fd = self._sys(os.open, self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, where=self.path)
        self._fds: dict[str, int] = {}
        self._finalizer = weakref.finalize(self, _close_all, [self.fd], self._fds)

    # -- opening ------------------------------------------------------------------------------
    def _sys(self, call, *args, where, **kwargs):
        try:
            return call(*args, **kwargs)
        except FileNotFoundError:
            raise self.error(f"{where}: missing (or removed while the checkpoint was being read)") from None
        except OSError as exc:
            raise self.error(f"{where}: cannot be read ({exc.strerror or exc})") from None

    def _parts(self, rel: str | os.PathLike) -> tuple[str, ...]:
        parts = PurePosixPath(os.fspath(rel)).parts
        if not parts or parts[0] == "/" or any(p in ("", ".", "..") for p in parts):
            raise self.error(f"{self.path / rel}: not a path inside {self.path}")
        return parts

    def _escapes(self, rel: tuple[str, ...]) -> str | None:
        """The relative form of ``rel``'s target when a symbolic link on its way stays inside the
        directory; refuses one leading outside."""
        target = Path(os.path.realpath(self.path.joinpath(*rel)))
        if target == self.real or self.real in target.parents:
            return str(target.relative_to(self.real)) if target != self.real else None
        raise self.error(f"{self.path.joinpath(*rel)}: a symbolic link to {target}, outside the checkpoint "
                         f"{self.path}; refused (pass --follow-symlinks to read it)")

    def _stat(self, rel: tuple[str, ...], hops: int = 0) -> tuple[os.stat_result, tuple[str, ...]] | None:
        """``lstat`` of ``rel`` with symbolic links inside the directory resolved: the result and
        the link-free path it belongs to, or None when nothing is there."""
        where = self.path.joinpath(*rel)
        try:
            if self.follow_symlinks:
                return os.stat(os.path.join(*rel), dir_fd=self.fd), rel
            for k in range(len(rel)):
                st = os.stat(os.path.join(*rel[:k + 1]), dir_fd=self.fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    if hops > 8:
                        raise self.error(f"{where}: too many levels of symbolic links")
                    inside = self._escapes(rel[:k + 1])
                    resolved = (tuple(PurePosixPath(inside).parts) if inside else ()) + rel[k + 1:]
                    if not resolved:
                        raise self.error(f"{where}: a symbolic link to the checkpoint directory itself")
                    return self._stat(resolved, hops + 1)
                if k < len(rel) - 1 and not stat.S_ISDIR(st.st_mode):
                    return None
            return st, rel
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self.error(f"{where}: cannot be read ({exc.strerror or exc})") from None

    def kind(self, rel: str | os.PathLike) -> str | None:
        """``"file"``, ``"dir"`` or None (absent). A special file, or a link leading outside, is
        refused here, before anything opens it."""
        found = self._stat(self._parts(rel))
        return None if found is None else self._judge(found[0], self.path / rel)

    def _judge(self, st: os.stat_result, where: Path) -> str:
        if stat.S_ISREG(st.st_mode):
            return "file"
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        raise self.error(f"{where}: is {special_kind(st.st_mode) or 'not a regular file'}; refused")

    def open(self, rel: str | os.PathLike) -> int:
        """A read-only descriptor of the regular file ``rel``, opened once and held until
        :meth:`close`."""
        key = os.fspath(rel)
        if key in self._fds:
            return self._fds[key]
        parts = self._parts(rel)
        where = self.path / rel
        found = self._stat(parts)
        if found is None:
            raise self.error(f"{where}: missing (or removed while the checkpoint was being read)")
        st, real = found
        if self._judge(st, where) != "file":
            raise self.error(f"{where}: is a directory, expected a file")
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if self.follow_symlinks else os.O_NOFOLLOW)
        _room_for_descriptors(len(self._fds) + 16)
        fd = self._sys(os.open, os.path.join(*real), flags, dir_fd=self.fd, where=where)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise self.error(f"{where}: changed while the checkpoint was being opened; refused")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self._fds[key] = fd
        return fd

    def listdir(self, rel: str | os.PathLike = ".") -> list[str]:
        """Entry names of the directory ``rel`` (``"."``: the checkpoint itself), sorted."""
        if os.fspath(rel) in (".", ""):
            return sorted(self._sys(os.listdir, self.fd, where=self.path))
        parts = self._parts(rel)
        found = self._stat(parts)
        if found is None or self._judge(found[0], self.path / rel) != "dir":
            raise self.error(f"{self.path / rel}: not a directory")
        fd = self._sys(os.open, os.path.join(*found[1]), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                       | (0 if self.follow_symlinks else os.O_NOFOLLOW), dir_fd=self.fd, where=self.path / rel)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------------
    def size(self, rel: str | os.PathLike) -> int:
        return os.fstat(self.open(rel)).st_size

    def read(self, rel: str | os.PathLike, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
        fd, chunks = self.open(rel), []
        while length > 0:
            chunk = self._sys(os.pread, fd, min(length, 1 << 24), offset, where=self.path / rel)
            if not chunk:
                break
            chunks.append(chunk)
            offset, length = offset + len(chunk), length - len(chunk)
        return b"".join(chunks)

    def read_json(self, rel: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
        """The JSON document ``rel`` (see :func:`parse_json`)."""
        size = self.size(rel)
        if size > limit:
            raise self.error(f"{self.path / rel}: {size} bytes, more than the {limit} a JSON file may have here")
        return parse_json(self.read(rel, 0, size), self.path / rel, self.error)

    def proc_path(self, rel: str | os.PathLike) -> str:
        """A path naming the held descriptor of ``rel`` (``/proc/self/fd/N``), for consumers that
        open by name (``torch.load(mmap=True)``, a kernel copy): it opens the same file, even once
        it has been replaced or unlinked. Valid until :meth:`close`."""
        fd = self.open(rel)
        return str(_PROC_FD / str(fd)) if _PROC_FD.is_dir() else str(self.path / rel)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "SourceDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_all(dir_fds: list[int], fds: dict[str, int]) -> None:
    for fd in [*fds.values(), *dir_fds]:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
    dir_fds.clear()


def _room_for_descriptors(needed: int) -> None:
    """Raise the soft limit on open files towards the hard one when a checkpoint holds more files
    than the default 1024 allows (a native checkpoint keeps one data file per tensor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and needed + 64 > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY
                                                        else max(soft, min(hard, 2 * soft + needed)), hard))
        except (ValueError, OSError):
            pass


# ------------------------------------------------------------------------------------ JSON
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def json_depth_exceeded(raw: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when brackets nest deeper than ``limit`` (checked before parsing: the parser recurses
    once per level and a deep document exhausts the interpreter's stack)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_json(raw: bytes, where: str | os.PathLike, error: Callable[[str], Exception] = ValueError) -> Any:
    """Strict JSON: UTF-8, nesting at most :data:`MAX_JSON_DEPTH`, no ``NaN``/``Infinity`` and
    no number overflowing a float, no key twice in an object. Python's ``json`` accepts all four;
    none is valid JSON, and each has passed a wrong value through silently. A non-finite number
    is named by its key path."""
    if json_depth_exceeded(raw):
        raise error(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; refused")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None
    path = nonfinite_path(data)
    if path is not None:
        raise error(f"{where}: {path} is not a finite number (NaN, Infinity or too large for a float); refused")
    return data
