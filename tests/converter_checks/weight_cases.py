"""Helpers shared by the weight primitive and streaming driver tests."""
from __future__ import annotations

import torch


def randn(shape, dtype, seed):
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def assert_bitwise(actual, expected, what=""):
    assert len(actual) == len(expected), what
    for i, (a, b) in enumerate(zip(actual, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}[{i}]: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{what}[{i}]: values differ"


def assert_no_sharing(outputs, inputs):
    ptrs = [t.untyped_storage().data_ptr() for t in inputs if t.numel()]
    seen = set(ptrs)
    for t in outputs:
        if not t.numel():
            continue
        p = t.untyped_storage().data_ptr()
        assert p not in seen, "an output shares storage with an input or another output"
        assert t.is_contiguous() and t.storage_offset() == 0
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
        seen.add(p)


def assemble(blocks, shape) -> torch.Tensor:
    return torch.cat([b.reshape(-1) for b in blocks]).view(shape)
