"""Which tensors of a conversion are still, unchanged, bytes of a source file: those the writers
have the kernel copy file to file instead of writing from memory."""
from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch

from .native_format import Concatenation
from .pages import FileSlice


class FileOrigins:
    """Which source tensors are, unchanged, bytes of a file (what a reader's ``extent_of`` says
    of the tensors it maps), so that the writers can have the kernel copy them file to file
    (:class:`checkpoints.pages.FileSlice`) instead of writing them from memory.

    Valid because the pipeline never writes to a source tensor (transforms are pure functions).
    Records are keyed by storage and live as long as their tensor (a weak reference): a view of a
    live source tensor is found too, and a later tensor at a freed address is never mistaken for
    a recorded one."""

    def __init__(self):
        self._records: dict[int, tuple[weakref.ref, Path, int, int]] = {}

    def record(self, tensor: torch.Tensor, file: str | os.PathLike, offset: int) -> None:
        key = tensor.untyped_storage().data_ptr()

        def forget(ref, key=key):
            if self._records.get(key, (None,))[0] is ref:
                del self._records[key]

        self._records[key] = (weakref.ref(tensor, forget), Path(file), offset, tensor.data_ptr())

    def slice_of(self, tensor: torch.Tensor) -> torch.Tensor | FileSlice:
        """``tensor`` as a file slice when it is (a contiguous view of) a recorded, live tensor."""
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0 or not tensor.is_contiguous():
            return tensor
        record = self._records.get(tensor.untyped_storage().data_ptr())
        if record is None or record[0]() is None:
            return tensor
        _, file, offset, base = record
        return FileSlice(tensor, file, offset + tensor.data_ptr() - base)

    def concatenation(self, parts: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor | Concatenation:
        """An output's parts as the writers take them (``convert_stream``'s ``blocks`` hook, called
        while the sources are alive): a :class:`Concatenation`, with file slices where a recorded
        tensor holds a part; a lone part that is no file slice stays a plain tensor."""
        found = [self.slice_of(p) for p in parts]
        if len(found) == 1 and not isinstance(found[0], FileSlice) and tuple(found[0].shape) == tuple(shape):
            return found[0]
        return Concatenation(found, shape)
