"""The lazy tensor-source interface: what a checkpoint reader offers beyond ``Mapping[str, Tensor]``.

Conversion streams tensors from a reader one rule at a time, so it needs names, shapes and dtypes
before any data is read, and, where the bytes lie unchanged in a file, their place on disk (a
writer then copies them file to file instead of from memory). Both readers
(:class:`checkpoints.hf_reader.HFCheckpointReader`, :class:`checkpoints.native_reader.NativeCheckpointReader`)
derive from :class:`LazyReader`, which declares that interface and writes its ``Mapping`` half
once; the wrappers the plans put around them (:class:`checkpoints.fp8.DequantizedSource`,
:class:`checkpoints.nonfinite.CheckedSource`) forward as much of it as their source has.

A plain ``dict`` of tensors is also accepted wherever a source is (tests, in-memory conversion):
the optional capabilities below are therefore checked with ``isinstance`` against these
runtime-checkable protocols, not assumed. ``converters.weights.convert_stream`` checks ``shape_of``
by itself, by name, because ``converters`` does not import this package.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .source_dir import SourceDir


@runtime_checkable
class TensorSource(Protocol):
    """A read-only, lazy ``name -> tensor`` mapping whose metadata costs no data read.

    ``source[name]`` and :meth:`load_many` return tensors the caller owns (maps or copies)."""

    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object) -> bool: ...
    def __getitem__(self, name: str) -> torch.Tensor: ...
    def keys(self): ...
    def shape_of(self, name: str) -> torch.Size: ...
    def dtype_of(self, name: str) -> torch.dtype: ...


@runtime_checkable
class Located(Protocol):
    """A source that knows where a tensor's bytes lie, as they are, in a file."""

    def extent_of(self, name: str) -> tuple[Path, int] | None:
        """``(file, offset)`` of ``source[name]``'s bytes; None where they are not stored as is."""


@runtime_checkable
class FileNamed(Protocol):
    """A source of several files that names the one holding a tensor (for refusal messages)."""

    def file_of(self, name: str) -> str:
        """The file (relative to the checkpoint directory) holding ``name``."""


class LazyReader(Mapping, ABC):
    """A checkpoint reader: a validated, lazy ``name -> tensor`` mapping over files it holds open.

    Opening holds the directory as untrusted input (:class:`checkpoints.source_dir.SourceDir`) and
    calls :meth:`_open`, which reads and validates everything but tensor data and sets
    ``self._names`` (the tensor names, in the order iteration gives them); a failure releases the
    held files. ``reader[name]`` is ``load_many([name])[name]``. Closing releases the held files;
    tensors already returned stay valid (they are maps or copies)."""

    _names: list[str]
    _entries: dict[str, Any]  # per tensor name, what the format's header says of it (set by _open)
    #: what the reader raises for a checkpoint it refuses, and what it calls one in messages
    error_type: type[ValueError]
    describes: str

    def __init__(self, path: str | os.PathLike, *, follow_symlinks: bool = False):
        self.path = Path(path)
        if not self.path.is_dir():
            raise self.error_type(f"{self.path}: not a directory ({self.describes} is a directory)")
        self.source = SourceDir(self.path, follow_symlinks=follow_symlinks, error=self.error_type)
        try:
            self._open()
        except BaseException:
            self.source.close()
            raise

    @abstractmethod
    def _open(self) -> None: ...

    def _entry(self, name: str) -> Any:
        """The header entry of ``name``; ``KeyError(name)`` for a name the checkpoint lacks."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(name) from None

    @abstractmethod
    def __contains__(self, name: object) -> bool: ...

    @abstractmethod
    def shape_of(self, name: str) -> torch.Size: ...

    @abstractmethod
    def dtype_of(self, name: str) -> torch.dtype: ...

    @abstractmethod
    def extent_of(self, name: str) -> tuple[Path, int] | None:
        """``(file, offset)`` where ``reader[name]``'s bytes lie as they are; None where they do not."""

    @abstractmethod
    def load_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several tensors, each file opened once; returned in the order asked."""

    @abstractmethod
    def close(self) -> None: ...

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self:
            raise KeyError(name)
        return self.load_many([name])[name]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
