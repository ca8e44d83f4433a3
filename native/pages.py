"""Pre-faulting memory-mapped tensors (Linux ``madvise(MADV_POPULATE_READ)``).

A tensor memory-mapped from a file in the page cache is normally mapped page by page as it is
touched. When the first touch is a ``write(2)`` of the tensor into another file (a rename during
conversion), each page fault is taken inside the kernel's copy, one page at a time: measured here,
that halves the write speed. One ``MADV_POPULATE_READ`` call maps the whole range first (the
readers do it for every tensor they map, since a conversion reads every byte anyway). Where the
call is unavailable (other systems, kernels before 5.14) this is a no-op.
"""
from __future__ import annotations

import ctypes
import errno
import mmap

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
