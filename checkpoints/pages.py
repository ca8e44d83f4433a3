"""Memory-mapped tensors: pre-faulting them (Linux ``madvise(MADV_POPULATE_READ)``), and writing
their bytes into another file by a kernel copy (:class:`FileSlice`, :func:`write_bytes`).

A tensor memory-mapped from a file in the page cache is normally mapped page by page as it is
touched. When the first touch is a ``write(2)`` of the tensor into another file (a rename during
conversion), each page fault is taken inside the kernel's copy, one page at a time, which slows
the write down (``benchmarks/checkpoint_io.py`` measures it). One ``MADV_POPULATE_READ`` call maps the whole range first (the
readers do it for every tensor they map, since a conversion reads every byte anyway). Where the
call is unavailable (other systems, kernels before 5.14) this is a no-op.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch

MADV_POPULATE_READ = 22
_PAGE = mmap.PAGESIZE
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _madvise = None
_supported = _madvise is not None


def populate(tensor: torch.Tensor) -> bool:
    """Map every page of ``tensor``'s bytes now (reading them from the page cache or the disk).

    Returns False when the kernel reports part of the range unreadable (a file truncated under its
    mapping: touching it would raise SIGBUS); True otherwise, unsupported systems included."""
    global _supported
    nbytes = tensor.numel() * tensor.element_size()
    if not _supported or nbytes == 0 or tensor.device.type != "cpu":
        return True
    start = tensor.data_ptr() - tensor.data_ptr() % _PAGE
    if _madvise(start, tensor.data_ptr() + nbytes - start, MADV_POPULATE_READ) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EFAULT, errno.EIO, errno.EHWPOISON if hasattr(errno, "EHWPOISON") else errno.EIO):
        return False
    _supported = False  # EINVAL (kernel before 5.14) and the like: stop asking
    return True


# ------------------------------------------------------------------------------ writing bytes
@dataclass(frozen=True, eq=False)
class FileSlice:
    """``tensor``, whose bytes are bytes ``[offset, offset + tensor.nbytes)`` of ``file``, unchanged
    (a reader mapped it from there and nothing has written to it since). :func:`write_bytes` has
    the kernel copy them file to file (``copy_file_range``), close to ``cp`` speed, instead of
    faulting in and writing out the private maps (``benchmarks/convert.py`` measures both against
    ``cp -r``). The tensor stays the fallback where the kernel cannot copy."""

    tensor: torch.Tensor
    file: Path
    offset: int

    @property
    def nbytes(self) -> int:
        return self.tensor.nbytes


# errors meaning "this kernel / file system pair cannot copy": fall back to writing from memory
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF,
                   errno.EPERM}
_copy_supported = hasattr(os, "copy_file_range")


def write_bytes(fd: int, block: "torch.Tensor | FileSlice", position: int) -> int:
    """Write ``block``'s bytes at ``position`` of ``fd``; returns the position after them.

    A :class:`FileSlice` is copied by the kernel (``copy_file_range``) as far as it will; the rest
    (all of it on systems or file systems that refuse) is written from the tensor's memory. A
    tensor is written from its memory (it must be contiguous)."""
    copied = _copy_file_range(block, fd, position) if isinstance(block, FileSlice) else 0
    tensor = block.tensor if isinstance(block, FileSlice) else block
    if tensor.numel() == 0 or copied == tensor.nbytes:
        return position + copied
    data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())[copied:]
    position += copied
    while len(data):
        written = os.pwrite(fd, data, position)
        data, position = data[written:], position + written
    return position


def _copy_file_range(block: FileSlice, fd: int, position: int) -> int:
    """Bytes of ``block`` the kernel copied (0 where it cannot: see :data:`_NO_KERNEL_COPY`)."""
    global _copy_supported
    if not _copy_supported or block.nbytes == 0:
        return 0
    copied = 0
    try:
        source = os.open(block.file, os.O_RDONLY)
    except OSError:
        return 0
    try:
        while copied < block.nbytes:
            n = os.copy_file_range(source, fd, block.nbytes - copied, block.offset + copied, position + copied)
            if n == 0:  # the file is shorter than the slice: the rest from memory
                break
            copied += n
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
        if exc.errno == errno.ENOSYS:
            _copy_supported = False
    finally:
        os.close(source)
    return copied
