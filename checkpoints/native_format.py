"""The native checkpoint format: ``config.json`` plus weights in torch.distributed.checkpoint (DCP).

On disk::

    ckpt/config.json            ModelConfig.to_json() (carries format_version)
    ckpt/.metadata              DCP metadata, when saved as one stage
    ckpt/__0_0.distcp ...       DCP data: one file per tensor (see :mod:`checkpoints.native_writer`)

or, when saved in pipeline stages::

    ckpt/config.json
    ckpt/pp0/stage.json         {"stage": 0, "num_stages": 3, "layers": [0, 4]}   (half-open)
    ckpt/pp0/.metadata, ...     DCP directory holding embedding.* and layers 0..3
    ckpt/pp1/...                layers 4..7
    ckpt/pp2/...                layers 8..11, final_norm.*, output.*

Stage ``k`` holds the contiguous layer range of its ``stage.json``; the embedding goes with the
first stage and everything after the last layer (final norm, output) with the last one.

Everything is single process: DCP is called with ``no_dist=True``; no process group is needed.
There is no fallback to random initialisation anywhere. Any valid DCP save with these names is
readable (a single ``.distcp`` per stage included); stock ``dcp.load`` reads what
:func:`checkpoints.native_writer.write_checkpoint` writes.

This module holds what the writer (:mod:`checkpoints.native_writer`) and the reader
(:mod:`checkpoints.native_reader`) share: the file names, the stage split, the error type, the
:class:`Concatenation` a writer accepts in place of a tensor, and detection. It is split from them
so that each of the three reads on its own: the writer depends on torch's private DCP storage
record, the reader on untrusted-input handling, and neither on the other.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from native import layout
from native.config import ModelConfig

from .pages import FileSlice
from .source_dir import SourceDir

#: torch's DCP logger writes a DEBUG record per tensor and phase (256 lines in one failing gate log):
#: noise in every report that captures logs. Its warnings and errors still show.
DCP_LOGGER = "c10d-NullHandler-dcp_logger"
logging.getLogger(DCP_LOGGER).setLevel(logging.WARNING)

CONFIG_FILE = "config.json"
STAGE_FILE = "stage.json"
DCP_METADATA_FILE = ".metadata"
_STAGE_DIR = re.compile(r"pp(0|[1-9][0-9]*)")
_STORAGE_RECORD = re.compile(r"[^/]+/data/[0-9]+")  # a storage's bytes in a torch.save archive


class CheckpointError(ValueError):
    """A native checkpoint that cannot be written or read faithfully. Names the stage/tensor/file."""


@dataclass(frozen=True)
class Stage:
    """One DCP directory of a checkpoint and the layers it holds (``layers`` is a range)."""

    name: str  # "pp1", or "." for a checkpoint saved as a single stage
    path: Path
    index: int
    layers: range
    first: bool
    last: bool

    def owns(self, tensor: str) -> bool:
        layer = layout.layer_of(tensor)
        if layer is not None:
            return layer in self.layers
        return self.first if tensor.startswith("embedding.") else self.last

    def describe(self) -> str:
        return "checkpoint" if self.name == "." else f"stage {self.name}"


def stage_ranges(num_layers: int, stages: int) -> list[range]:
    """Split ``num_layers`` into ``stages`` contiguous ranges, the first ones one layer longer."""
    base, extra = divmod(num_layers, stages)
    ranges, start = [], 0
    for k in range(stages):
        stop = start + base + (1 if k < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


# --------------------------------------------------------------------------------------- saving
class Concatenation:
    """A tensor given as the blocks it is made of, never assembled: its elements, in row-major
    order, are the blocks' elements one after another (``torch.cat([b.reshape(-1) for b in
    blocks]).view(shape)``; ``shape`` defaults to the blocks concatenated along dim 0).

    :func:`write_checkpoint` accepts it wherever it accepts a tensor and writes each block's bytes
    at its place in the data file, so ``fc1 = [gate; up]``, a grouped ``qkv`` or stacked experts
    cost neither fresh memory nor a copy: a ``torch.cat`` into fresh pages ran at ~1.7 GB/s on the
    2-core dev box, slower than writing its result. Blocks are CPU tensors of one dtype (made
    contiguous where they are not), or :class:`checkpoints.pages.FileSlice` of such tensors: bytes
    the kernel copies from their file."""

    def __init__(self, blocks: Iterable["torch.Tensor | FileSlice"], shape: Iterable[int] | None = None):
        self.blocks = tuple(_contiguous(b) for b in blocks)
        tensors = self.tensors()
        if not tensors or any(t.dtype != tensors[0].dtype or t.device.type != "cpu" for t in tensors):
            raise CheckpointError("Concatenation: expected CPU blocks of one dtype, got "
                                  + (", ".join(f"{t.dtype} {t.device}" for t in tensors) or "none"))
        self.shape = torch.Size(shape if shape is not None else _rows_concatenated(tensors))
        if self.shape.numel() != self.numel():
            raise CheckpointError(f"Concatenation: blocks of {self.numel()} elements cannot have shape {tuple(self.shape)}")

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The blocks as tensors (a file slice's tensor holds its bytes too)."""
        return tuple(b.tensor if isinstance(b, FileSlice) else b for b in self.blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors()[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors())

    def element_size(self) -> int:
        return self.tensors()[0].element_size()

    def materialize(self) -> torch.Tensor:
        """The tensor itself (one copy), for consumers that need its values."""
        return torch.cat([t.reshape(-1) for t in self.tensors()]).view(self.shape)

    def __repr__(self) -> str:
        return f"Concatenation({len(self.blocks)} blocks, {tuple(self.shape)}, {self.dtype})"


def _contiguous(block: "torch.Tensor | FileSlice") -> "torch.Tensor | FileSlice":
    if isinstance(block, FileSlice):
        if not block.tensor.is_contiguous():
            raise CheckpointError(f"Concatenation: a file slice of {block.file} is not a contiguous tensor")
        return block
    return block if block.is_contiguous() else block.contiguous()


def _rows_concatenated(blocks: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    if any(b.dim() == 0 or b.shape[1:] != blocks[0].shape[1:] for b in blocks):
        raise CheckpointError("Concatenation: blocks differ in their trailing dimensions: "
                              + ", ".join(str(tuple(b.shape)) for b in blocks))
    return (sum(b.shape[0] for b in blocks), *blocks[0].shape[1:])


@contextmanager
def quiet_dcp():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def dcp_cause(exc: BaseException) -> BaseException:
    """DCP wraps per-rank failures in CheckpointException (a BaseException); unwrap the first."""
    if isinstance(exc, CheckpointException):
        for inner, _ in exc.failures.values():
            return inner
    return exc


def describe_error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def check_state_keys(cfg: ModelConfig, names: Iterable[str]) -> None:
    """Raise CheckpointError naming the first missing/extra tensors against the config's layout."""
    expected = layout.state_shapes(cfg)
    names = list(names)
    present = set(names)
    missing = [n for n in expected if n not in present]
    extra = sorted(n for n in present if n not in expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {few(missing)}")
        if extra:
            parts.append(f"extra tensor(s) {few(extra)} not in the config's layout")
        raise CheckpointError("state does not match the config: " + "; ".join(parts))


def few(names: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def stage_index(cfg: ModelConfig, pipeline_stages: int) -> Callable[[str], int]:
    """``name -> the stage (0-based) holding it`` when saved in ``pipeline_stages`` stages."""
    ranges = stage_ranges(cfg.num_layers, pipeline_stages)
    stages = [Stage(f"pp{k}", Path(), k, r, k == 0, k == len(ranges) - 1) for k, r in enumerate(ranges)]

    def index(name: str) -> int:
        return next(s.index for s in stages if s.owns(name))

    return index


def stage_order(cfg: ModelConfig, names: Iterable[str], pipeline_stages: int) -> list[str]:
    """``names`` stably reordered stage by stage (the order :func:`write_checkpoint` streams in)."""
    return sorted(names, key=stage_index(cfg, pipeline_stages))


# -------------------------------------------------------------------------------------- reading
MAX_METADATA_BYTES = 2**30  # a .metadata of a million tensors is ~200 MB


def stage_path(stage: Stage, name: str) -> str:
    """``name`` inside ``stage``'s folder, relative to the checkpoint."""
    return name if stage.name == "." else f"{stage.name}/{name}"


def is_native_checkpoint(path: str | os.PathLike) -> bool:
    """Cheap detection (for the CLI): a directory with config.json carrying ``format_version`` and
    no HF ``model_type``, plus DCP weights or stage folders. Does not validate."""
    try:
        with SourceDir(path, follow_symlinks=True) as source:
            data = source.read_json(CONFIG_FILE) if source.kind(CONFIG_FILE) == "file" else None
            if not isinstance(data, dict) or "format_version" not in data or "model_type" in data:
                return False
            return source.kind(DCP_METADATA_FILE) == "file" or source.kind("pp0") == "dir"
    except ValueError:
        return False


def data_offset(stream, nbytes: int) -> int | None:
    """Where the tensor's ``nbytes`` bytes start in a one-tensor ``torch.save`` archive (a stored
    zip record ``<archive>/data/0``: its local header's offset, the header, then the data); None
    for any other file."""
    try:
        with zipfile.ZipFile(stream) as archive:
            records = [info for info in archive.infolist() if _STORAGE_RECORD.fullmatch(info.filename)]
        if (len(records) != 1 or not records[0].filename.endswith("/data/0")
                or records[0].compress_type != zipfile.ZIP_STORED or records[0].file_size != nbytes):
            return None
        stream.seek(records[0].header_offset)
        header = stream.read(30)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return records[0].header_offset + 30 + name_length + extra_length
