"""Kernel page copies (checkpoints.pages): file slices copied file to file byte for byte, and the
fallbacks where the kernel cannot copy."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

import checkpoints
from checkpoints import native_format, native_writer, pages
from native_checkpoint_cases import _no_fsync, random_state, tiny_config, tree_bytes  # noqa: F401


# ----------------------------------------------------------------- kernel copies (checkpoints.pages)
def file_slice(tmp_path: Path, tensor: torch.Tensor, lead: int = 123, name: str = "source.bin") -> pages.FileSlice:
    """``tensor``'s bytes in a file after ``lead`` other bytes, as a file slice of that file."""
    source = tmp_path / name
    source.write_bytes(b"x" * lead + tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return pages.FileSlice(tensor, source, lead)


def write_blocks(path: Path, blocks) -> bytes:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        position = 5
        for block in blocks:
            position = pages.write_bytes(fd, block, position)
        assert position == 5 + sum(b.nbytes for b in blocks)
    finally:
        os.close(fd)
    return path.read_bytes()


def kernel_copy(monkeypatch, behaviour):
    """Replace os.copy_file_range by ``behaviour(real, *args)``; returns the list of calls."""
    real, calls = os.copy_file_range, []

    def fake(*args):
        calls.append(args)
        return behaviour(real, *args)

    monkeypatch.setattr(pages.os, "copy_file_range", fake)
    monkeypatch.setattr(pages, "_copy_supported", True)
    return calls


def test_file_slices_are_copied_by_the_kernel_byte_for_byte(tmp_path, monkeypatch):
    tensor = torch.randn(300, 7).to(torch.bfloat16)
    calls = kernel_copy(monkeypatch, lambda real, *a: real(*a))
    plain = torch.arange(11, dtype=torch.int16)
    copied = write_blocks(tmp_path / "a", [file_slice(tmp_path, tensor), plain])
    assert len(calls) >= 1
    assert copied == write_blocks(tmp_path / "b", [tensor, plain])  # the same bytes from memory
    assert copied[5:5 + tensor.nbytes] == tensor.view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("error", [errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP])
def test_file_slices_fall_back_to_memory_where_the_kernel_cannot_copy(tmp_path, monkeypatch, error):
    tensor = torch.randn(64, 9)
    expected = write_blocks(tmp_path / "memory", [tensor])

    def refuse(real, *args):
        raise OSError(error, os.strerror(error))

    calls = kernel_copy(monkeypatch, refuse)
    assert write_blocks(tmp_path / "a", [file_slice(tmp_path, tensor)]) == expected
    assert len(calls) == 1
    write_blocks(tmp_path / "b", [file_slice(tmp_path, tensor)])
    assert len(calls) == (1 if error == errno.ENOSYS else 2)  # ENOSYS: never asked again


def test_file_slices_partly_copied_finish_from_memory(tmp_path, monkeypatch):
    tensor = torch.randn(64, 9)
    expected = write_blocks(tmp_path / "memory", [tensor])
    budget = [100]  # the kernel copies 100 bytes, then reports the file ended

    def short(real, src, dst, count, offset_src, offset_dst):
        n = min(count, budget[0])
        budget[0] -= n
        return real(src, dst, n, offset_src, offset_dst) if n else 0

    kernel_copy(monkeypatch, short)
    assert write_blocks(tmp_path / "a", [file_slice(tmp_path, tensor)]) == expected
    monkeypatch.delattr(pages.os, "copy_file_range")  # systems without it: the flag is all that is asked
    monkeypatch.setattr(pages, "_copy_supported", False)
    assert write_blocks(tmp_path / "b", [file_slice(tmp_path, tensor)]) == expected


def test_kernel_copy_errors_other_than_unsupported_are_raised(tmp_path, monkeypatch):
    def full(real, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    kernel_copy(monkeypatch, full)
    with pytest.raises(OSError, match="No space"):
        write_blocks(tmp_path / "a", [file_slice(tmp_path, torch.ones(8))])


def test_file_slices_in_a_checkpoint_give_the_same_files(tmp_path, monkeypatch):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg, torch.bfloat16)
    calls = kernel_copy(monkeypatch, lambda real, *a: real(*a))
    items = [(n, native_format.Concatenation([file_slice(tmp_path, t, name=n)]) if t.dim() == 2 else t)
             for n, t in state.items()]
    native_writer.write_checkpoint(tmp_path / "slices", cfg, items, {n: t.dtype for n, t in state.items()})
    assert len(calls) == sum(t.dim() == 2 for t in state.values())
    checkpoints.save_checkpoint(tmp_path / "plain", cfg, state)
    assert tree_bytes(tmp_path / "slices") == tree_bytes(tmp_path / "plain")
    reader = checkpoints.open_checkpoint(tmp_path / "slices")
    for name, tensor in state.items():  # the reader knows where each tensor's bytes lie
        file, offset = reader.extent_of(name)
        assert file.read_bytes()[offset:offset + tensor.nbytes] == tensor.view(torch.uint8).numpy().tobytes()


