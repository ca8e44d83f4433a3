"""The native checkpoint format: ``config.json`` plus weights in torch.distributed.checkpoint (DCP).

On disk::

    ckpt/config.json            ModelConfig.to_json() (carries format_version)
    ckpt/.metadata              DCP metadata, when saved as one stage
    ckpt/__0_0.distcp ...       DCP data: one file per tensor (see "Streaming" below)

or, when saved in pipeline stages::

    ckpt/config.json
    ckpt/pp0/stage.json         {"stage": 0, "num_stages": 3, "layers": [0, 4]}   (half-open)
    ckpt/pp0/.metadata, ...     DCP directory holding embedding.* and layers 0..3
    ckpt/pp1/...                layers 4..7
    ckpt/pp2/...                layers 8..11, final_norm.*, output.*

Stage ``k`` holds the contiguous layer range of its ``stage.json``; the embedding goes with the
first stage and everything after the last layer (final norm, output) with the last one.

Everything is single process: DCP is called with ``no_dist=True``; no process group is needed.
Reading validates the whole checkpoint against ``layout.state_shapes(config)`` from metadata alone
(no tensor data is read), so a broken checkpoint is refused before any tensor is loaded, and the
lazy reader (:func:`open_checkpoint`) gives the same guarantees as :func:`load_checkpoint`.
There is no fallback to random initialisation anywhere. A checkpoint is untrusted input: its
``.metadata`` pickle is unpickled by an allow-list (:mod:`native.dcp_metadata`), its files are
opened once and read through the held descriptors, and nothing outside its directory is read
(:mod:`native.source_dir`).

Streaming (bounded memory whatever the model size):

- Writing (:func:`write_checkpoint`, which :func:`save_checkpoint` is built on) makes one ordinary
  ``dcp.save`` per stage folder, whose planner is given ``meta`` tensors (names, shapes and dtypes
  known up front from the config) and whose ``resolve_data`` pulls each tensor from the caller's
  stream only when DCP writes it. DCP writes items in plan order (one writer thread), so a stream
  produced in plan order is written tensor by tensor: peak memory is the tensor in flight (plus
  whatever the producer holds, e.g. one rule's outputs). A tensor arriving before its turn is
  held until DCP asks for it (correct, but memory then grows: callers order their stream). The
  DCP option ``single_file_per_rank=False`` gives each tensor its own ``.distcp`` file: DCP's
  writer keeps a reference to every tensor of the file it is writing until the file is closed,
  so with one file per stage a stage would sit in memory; with one file per tensor only the
  tensor in flight does (and reads can map each file, below). The data files are written by
  this module, not DCP (``_DeterministicWriter.write_data``): the same ``torch.save`` bytes
  and names, but the archive is saved without data and the tensor's bytes are then written at
  their offset, straight from a view or block by block from a :class:`Concatenation` (never
  assembled in memory). The zip CRC of ``torch.save`` is skipped: it cost as much as the write
  itself, and DCP never checks it.
- Reading (:class:`NativeCheckpointReader`): a tensor stored alone in its data file is loaded
  with ``torch.load(file, mmap=True)``: a private (copy-on-write) memory map, no copy made, its
  pages mapped in one call (``native.pages``); the file is never modified. Other layouts
  (several tensors per file, as older saves or other DCP writers make) go through ``dcp.load``
  into a fresh tensor. Either way the caller owns what it gets. Merging stage folders is per
  tensor too: nothing loads a whole stage.

Any valid DCP save with these names is readable (a single ``.distcp`` per stage included); stock
``dcp.load`` reads what :func:`write_checkpoint` writes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.futures import Future
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, FileSystem, _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import WriteItemType
from torch.distributed.checkpoint.storage import WriteResult

from . import layout
from .atomic import atomic_directory
from .config import ModelConfig
from .dcp_metadata import load_metadata
from .pages import FileSlice, populate, write_bytes
from .source_dir import MAX_LAYERS, SourceDir

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
    contiguous where they are not), or :class:`native.pages.FileSlice` of such tensors: bytes
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


class _DeterministicWriter(FileSystemWriter):
    """DCP's writer, with each tensor's data file written by :func:`_write_tensor_file` (same bytes
    as DCP's ``torch.save``, but written block by block from :class:`Concatenation` or from a view,
    with no assembled copy). It stores no (temporary) path nor random save id in ``.metadata``:
    the bytes are a function of the tensors alone, and the temp path stays off the disk."""

    def storage_meta(self):
        return None

    def write_data(self, plan, planner):
        """One file per write item, named as DCP names them (``{prefix}{k}.distcp``)."""
        results, skeletons = [], {}
        for k, item in enumerate(plan.items):
            if item.type == WriteItemType.BYTE_IO:
                raise CheckpointError(f"{item.index.fqn!r}: only tensors are saved in a native checkpoint")
            relative = f"{plan.storage_data.prefix}{k}{DEFAULT_SUFFIX}"
            length = _write_tensor_file(Path(self.path) / relative, planner.resolve_data(item), skeletons,
                                        self.sync_files)
            results.append(WriteResult(index=item.index, size_in_bytes=length,
                                       storage_data=_StorageInfo(relative, 0, length)))
        future: Future = Future()
        future.set_result(results)
        return future


def _write_tensor_file(path: Path, value: "torch.Tensor | Concatenation",
                       skeletons: dict | None = None, sync: bool = False) -> int:
    """``torch.save(value)``'s bytes at ``path``; returns the file's length.

    The archive without its data depends on the shape and dtype alone (with the CRC off, see
    :func:`_no_crc`): it is saved once per shape and dtype (``torch.serialization.skip_data``,
    from an untouched placeholder whose pages are never mapped) and kept in ``skeletons`` as the
    bytes before and after the data (~0.7 ms a file saved). Then each block is written at the
    data's offset. Same bytes as ``torch.save`` of the assembled tensor."""
    blocks = value.blocks if isinstance(value, Concatenation) else (value,)
    key = (tuple(value.shape), value.dtype)
    with open(path, "w+b") as stream:
        if skeletons is not None and key in skeletons:
            head, tail = skeletons[key]
            stream.write(head)
            stream.seek(len(head) + value.nbytes)
            stream.write(tail)
            stream.flush()
        else:
            head, tail = _save_skeleton(stream, value, path)
            if skeletons is not None:
                skeletons[key] = head, tail
        position = len(head)
        for block in blocks:
            position = write_bytes(stream.fileno(), block, position)
        if sync:
            os.fsync(stream.fileno())
        return len(head) + value.nbytes + len(tail)


def _save_skeleton(stream, value: "torch.Tensor | Concatenation", path: Path) -> tuple[bytes, bytes]:
    """``torch.save`` of ``value``'s shape and dtype without the data, into ``stream``; returns the
    archive's bytes before and after the data."""
    placeholder = torch.empty(tuple(value.shape), dtype=value.dtype)
    with torch.serialization.skip_data():
        torch.save(placeholder, stream)
    stream.flush()
    offset = _data_offset(stream, value.nbytes)
    if offset is None:
        raise CheckpointError(f"{path}: torch.save wrote an archive without the expected data record")
    stream.seek(0)
    head = stream.read(offset)
    stream.seek(offset + value.nbytes)
    return head, stream.read()


def _data_offset(stream, nbytes: int) -> int | None:
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


@contextmanager
def _quiet_dcp():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _cause(exc: BaseException) -> BaseException:
    """DCP wraps per-rank failures in CheckpointException (a BaseException); unwrap the first."""
    if isinstance(exc, CheckpointException):
        for inner, _ in exc.failures.values():
            return inner
    return exc


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class _Source:
    """The caller's ``(name, tensor)`` stream, pulled one tensor at a time by DCP's planner.

    ``take(name)`` advances the stream until ``name`` arrives; tensors arriving early are held in
    ``pending`` (``peak_pending_bytes`` records the most ever held, for tests and benchmarks).
    Every tensor is checked against the planned shape and dtype. An exception from the stream is
    kept in ``error``, so it can be re-raised as itself once DCP has unwound.
    """

    def __init__(self, stream: Iterable[tuple[str, torch.Tensor]], shapes: Mapping[str, tuple[int, ...]],
                 dtypes: Mapping[str, torch.dtype]):
        self.stream = iter(stream)
        self.shapes, self.dtypes = shapes, dtypes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = self.peak_pending_bytes = 0
        self.taken: set[str] = set()
        self.error: BaseException | None = None

    def take(self, name: str) -> torch.Tensor:
        try:
            return self._take(name)
        except BaseException as exc:
            self.error = exc
            raise

    def _take(self, name: str) -> torch.Tensor:
        while name not in self.pending:
            try:
                item = next(self.stream)
            except StopIteration:
                raise CheckpointError(f"tensor {name!r}: the tensor stream ended without it") from None
            try:
                got, value = item
            except (TypeError, ValueError):
                raise CheckpointError(f"tensor stream yielded {type(item).__name__}, expected (name, tensor)") from None
            if got not in self.dtypes:
                raise CheckpointError(f"tensor stream yielded {got!r}, which is not in the config's layout")
            if got in self.taken or got in self.pending:
                raise CheckpointError(f"tensor stream yielded {got!r} twice")
            tensor = _prepare(got, value, self.shapes[got])
            if tensor.dtype != self.dtypes[got]:
                raise CheckpointError(f"tensor {got!r}: dtype {tensor.dtype}, the write was planned with "
                                      f"{self.dtypes[got]}")
            self.pending[got] = tensor
            self.pending_bytes += tensor.nbytes
        tensor = self.pending.pop(name)
        self.pending_bytes -= tensor.nbytes
        self.peak_pending_bytes = max(self.peak_pending_bytes, self.pending_bytes)
        self.taken.add(name)
        return tensor

    def drain(self) -> None:
        """Run the stream to its end (its trailing checks included); refuse anything left over."""
        try:
            for item in self.stream:
                got = item[0] if isinstance(item, tuple) and item else item
                raise CheckpointError(f"tensor stream yielded {got!r} after every planned tensor was written")
        except BaseException as exc:
            self.error = exc
            raise
        if self.pending:
            raise CheckpointError(f"tensor(s) {_few(sorted(self.pending))} were produced but not written")


class _StreamingPlanner(DefaultSavePlanner):
    """Plans from ``meta`` tensors; resolves each write item by pulling it from the source."""

    def __init__(self, source: _Source):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.source = source

    def resolve_data(self, write_item):
        return self.source.take(write_item.index.fqn)


@contextmanager
def _no_crc():
    """torch.save's zip CRC32 is a full pass over the data that nothing ever checks on load."""
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(previous)


def _save_dcp(directory: Path, tensors: tuple[list[str], _Source] | Mapping[str, torch.Tensor]) -> None:
    """One DCP save of ``names`` (in this order), each pulled from the :class:`_Source` when
    written; or of a plain dict of tensors."""
    if isinstance(tensors, Mapping):
        tensors = (list(tensors), _Source(tensors.items(), {n: tuple(t.shape) for n, t in tensors.items()},
                                          {n: t.dtype for n, t in tensors.items()}))
    names, source = tensors
    directory.mkdir(parents=True, exist_ok=True)
    planned = {n: torch.empty(source.shapes[n], dtype=source.dtypes[n], device="meta") for n in names}
    writer = _DeterministicWriter(directory, sync_files=False, single_file_per_rank=False)
    try:
        with _quiet_dcp(), _no_crc():
            dcp.save(planned, storage_writer=writer, planner=_StreamingPlanner(source), no_dist=True)
    except CheckpointException as exc:
        if source.error is not None:  # the stream's own refusal (or an interrupt), as itself
            error, source.error = source.error, None
            raise error.with_traceback(error.__traceback__) from None
        cause = _cause(exc)
        if not isinstance(cause, Exception):  # KeyboardInterrupt and friends stay what they are
            raise cause from None
        raise CheckpointError(f"writing DCP weights to {directory} failed ({_describe(cause)})") from cause


def _prepare(name: str, value, expected: tuple[int, ...]) -> "torch.Tensor | Concatenation":
    """A detached, contiguous CPU tensor (or :class:`Concatenation`) of the planned shape. A view is
    kept as it is: its data file gets exactly its bytes (:func:`_write_tensor_file`)."""
    if isinstance(value, Concatenation):
        if tuple(value.shape) != tuple(expected):
            raise CheckpointError(f"tensor {name!r}: shape {tuple(value.shape)} but the config's layout says {tuple(expected)}")
        return value
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"tensor {name!r}: expected a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(expected):
        raise CheckpointError(f"tensor {name!r}: shape {tuple(value.shape)} but the config's layout says {tuple(expected)}")
    t = value.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t if t.is_contiguous() else t.contiguous()


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
            parts.append(f"missing tensor(s) {_few(missing)}")
        if extra:
            parts.append(f"extra tensor(s) {_few(extra)} not in the config's layout")
        raise CheckpointError("state does not match the config: " + "; ".join(parts))


def _few(names: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def _extra_file_path(relative: str | os.PathLike) -> Path:
    """A relative path inside the checkpoint that cannot collide with the format's own files."""
    rel = Path(relative)
    parts = rel.parts
    if (not parts or rel.is_absolute() or any(p in ("", ".", "..") for p in parts)
            or parts[0] in (CONFIG_FILE, DCP_METADATA_FILE) or _STAGE_DIR.fullmatch(parts[0])
            or (len(parts) == 1 and (rel.suffix == ".distcp" or parts[0].startswith(".")))):
        raise CheckpointError(f"extra file {str(relative)!r}: must be a relative path inside the checkpoint that "
                              f"does not collide with {CONFIG_FILE}, DCP files or stage folders")
    return rel


def _check_stages(cfg: ModelConfig, pipeline_stages) -> None:
    if (not isinstance(pipeline_stages, int) or isinstance(pipeline_stages, bool)
            or not 1 <= pipeline_stages <= cfg.num_layers):
        raise CheckpointError(f"pipeline_stages={pipeline_stages!r} must be an integer in 1..{cfg.num_layers} (the number of layers)")


def _planned_dtype(state: Mapping, name: str, shape: tuple[int, ...]) -> torch.dtype:
    """The dtype ``state[name]`` will have, from ``dtype_of`` when the mapping is lazy (a reader)."""
    dtype_of, shape_of = getattr(state, "dtype_of", None), getattr(state, "shape_of", None)
    if callable(dtype_of) and callable(shape_of):
        if tuple(shape_of(name)) != tuple(shape):
            raise CheckpointError(f"tensor {name!r}: shape {tuple(shape_of(name))} but the config's layout says {tuple(shape)}")
        return dtype_of(name)
    value = state[name]
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"tensor {name!r}: expected a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"tensor {name!r}: shape {tuple(value.shape)} but the config's layout says {tuple(shape)}")
    return value.dtype


def save_checkpoint(path: str | os.PathLike, cfg: ModelConfig, state: Mapping[str, torch.Tensor],
                    pipeline_stages: int = 1, *, overwrite: bool = False,
                    extra_files: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write ``cfg`` and ``state`` as a native checkpoint at ``path``, atomically.

    ``state`` must hold exactly ``layout.state_shapes(cfg)`` (names and shapes; any dtype, kept
    as is). ``pipeline_stages=k > 1`` writes stage folders ``pp0..pp{k-1}``. ``state`` may be a
    lazy mapping (e.g. a reader): tensors are then fetched one at a time as they are written
    (:func:`write_checkpoint`), so re-staging or merging a checkpoint never holds more than one
    tensor; a lazy mapping without ``dtype_of``/``shape_of`` is read twice (once for the dtypes).
    ``extra_files`` maps relative paths inside the checkpoint to files copied in (tokenizer files
    kept for the way back to HF), inside the same atomic write; the reader ignores them. Nothing
    appears at ``path`` unless everything was written; an existing ``path`` is refused unless
    ``overwrite``.
    """
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError(f"config: expected a native ModelConfig, got {type(cfg).__name__}")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"state: expected a mapping of tensor name to tensor, got {type(state).__name__}")
    _check_stages(cfg, pipeline_stages)
    check_state_keys(cfg, state.keys())
    shapes = layout.state_shapes(cfg)
    dtypes = {name: _planned_dtype(state, name, shape) for name, shape in shapes.items()}
    stream = ((name, state[name]) for name in dtypes)
    return write_checkpoint(path, cfg, stream, dtypes, pipeline_stages, overwrite=overwrite, extra_files=extra_files)


def write_checkpoint(path: str | os.PathLike, cfg: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]],
                     dtypes: Mapping[str, torch.dtype], pipeline_stages: int = 1, *, overwrite: bool = False,
                     extra_files: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Stream ``(name, tensor)`` pairs into a native checkpoint at ``path``, atomically.

    ``dtypes`` names every tensor of ``layout.state_shapes(cfg)`` with the dtype it will have, in
    the order the stream will produce them: DCP's metadata is planned from it before any data
    exists, and each tensor is pulled from ``tensors`` only when it is written (see the module
    docstring), so memory holds one tensor, not the model. For ``pipeline_stages > 1`` the stream
    must produce stage 0's tensors first, then stage 1's, and so on (:func:`stage_order`); a
    tensor produced early is held in memory until written. A tensor of another shape or dtype
    than planned, a name produced twice or not at all, or anything after the last planned
    tensor is refused with :class:`CheckpointError`; the stream is run to its end before the
    checkpoint is committed, so checks a generator makes after its last tensor still count.
    """
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError(f"config: expected a native ModelConfig, got {type(cfg).__name__}")
    _check_stages(cfg, pipeline_stages)
    check_state_keys(cfg, dtypes.keys())
    shapes = layout.state_shapes(cfg)
    ranges = stage_ranges(cfg.num_layers, pipeline_stages)
    extras = sorted((_extra_file_path(relative), Path(source)) for relative, source in (extra_files or {}).items())
    with atomic_directory(path, overwrite=overwrite, error=CheckpointError) as tmp:
        (tmp / CONFIG_FILE).write_text(cfg.to_json() + "\n", encoding="utf-8")
        source = _Source(tensors, shapes, dtypes)
        for k, layers in enumerate(ranges):
            stage = Stage(f"pp{k}", tmp / f"pp{k}", k, layers, k == 0, k == len(ranges) - 1)
            names = [n for n in dtypes if stage.owns(n)]
            if pipeline_stages == 1:
                _save_dcp(tmp, (names, source))
            else:
                _save_dcp(stage.path, (names, source))
                manifest = {"stage": k, "num_stages": pipeline_stages, "layers": [layers.start, layers.stop]}
                (stage.path / STAGE_FILE).write_text(json.dumps(manifest, sort_keys=True) + "\n", encoding="utf-8")
        source.drain()
        for relative, source_file in extras:
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(source_file, target)
            except OSError as exc:
                raise CheckpointError(f"extra file {str(relative)!r}: cannot copy it into {path} "
                                      f"({exc.strerror or exc})") from None
    return Path(path)


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


def _rel(stage: Stage, name: str) -> str:
    """``name`` inside ``stage``'s folder, relative to the checkpoint."""
    return name if stage.name == "." else f"{stage.name}/{name}"


class _HeldFiles(FileSystem):
    """DCP's file system, opening a stage's data files through the descriptors the reader holds
    (:class:`native.source_dir.SourceDir`): DCP reads the files validated at open time, never
    whatever the paths name by then."""

    def __init__(self, source: SourceDir, stage: Stage):
        super().__init__()
        self.source, self.stage = source, stage

    @contextmanager
    def create_stream(self, path, mode):
        if mode != "rb":
            raise CheckpointError(f"{path}: a checkpoint being read is never written")
        with open(self.source.proc_path(_rel(self.stage, Path(path).name)), "rb") as stream:
            yield stream


class _StageReader(FileSystemReader):
    """A FileSystemReader that serves the metadata already read and validated at open time, and
    reads data through the held descriptors."""

    def __init__(self, source: SourceDir, stage: Stage, metadata: Metadata):
        super().__init__(stage.path)
        self.fs = _HeldFiles(source, stage)
        self._validated = metadata

    def read_metadata(self, *args, **kwargs) -> Metadata:
        return self._validated


def _read_config(source: SourceDir) -> ModelConfig:
    file = source.path / CONFIG_FILE
    if source.kind(CONFIG_FILE) != "file":
        raise CheckpointError(f"{file}: missing (a native checkpoint needs its config.json)")
    data = source.read_json(CONFIG_FILE)
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    try:
        return ModelConfig.from_dict(data)
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        raise CheckpointError(f"{file}: not a valid native config ({exc})") from None


def _read_metadata(source: SourceDir, stage: Stage) -> Metadata:
    """The stage's DCP metadata, unpickled by :mod:`native.dcp_metadata` (no code runs) before
    anything else of the stage is read."""
    rel = _rel(stage, DCP_METADATA_FILE)
    file = source.path / rel
    if source.kind(rel) != "file":
        raise CheckpointError(f"{stage.describe()}: missing DCP metadata file {file}")
    size = source.size(rel)
    if size > MAX_METADATA_BYTES:
        raise CheckpointError(f"{stage.describe()}: DCP metadata file {file} has {size} bytes, more than the "
                              f"{MAX_METADATA_BYTES} accepted")
    return load_metadata(source.read(rel, 0, size), str(file),
                         lambda message: CheckpointError(f"{stage.describe()}: {message}"))


def _data_file_name(stage: Stage, rel: str, name: str) -> str:
    """A storage record's file: a plain name inside the stage's folder (what DCP writes), never
    a path leading elsewhere."""
    if not rel or "/" in rel or "\\" in rel or rel.startswith(".") or rel in (DCP_METADATA_FILE, STAGE_FILE):
        raise CheckpointError(f"{stage.describe()}: tensor {name!r} is stored at {rel!r}, which is not a data file "
                              f"of {stage.path} (DCP names them like __0_0.distcp); refused")
    return _rel(stage, rel)


def _covers(entry: TensorStorageMetadata) -> bool:
    """The chunks tile the tensor: no element left unread (it would be uninitialised memory)."""
    if math.prod(entry.size) != sum(math.prod(c.sizes) for c in entry.chunks):
        return False
    boxes = [(tuple(c.offsets), tuple(c.sizes)) for c in entry.chunks if math.prod(c.sizes)]
    for i, (o1, s1) in enumerate(boxes):
        for o2, s2 in boxes[i + 1:]:
            if all(a < b + m and b < a + n for a, n, b, m in zip(o1, s1, o2, s2)):
                return False
    return True


def _check_storage(source: SourceDir, stage: Stage, metadata: Metadata) -> dict[str, str]:
    """Every tensor's chunks tile it and its bytes lie inside a data file of the stage, opened now
    and held (catches truncation and paths leading outside cheaply). A tensor needs at least its
    own size in stored bytes, so no size is ever allocated that the files do not back.

    Returns ``name -> data file`` (relative to the checkpoint) for tensors stored as one chunk
    filling a file of their own (what :func:`write_checkpoint` makes): those are memory-mapped."""
    sizes: dict[str, int] = {}
    stored: dict[str, int] = {}
    whole: dict[str, str] = {}
    for index, info in metadata.storage_data.items():
        name = index.fqn
        rel = _data_file_name(stage, info.relative_path, name)
        if rel not in sizes:
            if source.kind(rel) != "file":
                raise CheckpointError(f"{stage.describe()}: data file {source.path / rel} (holding tensor {name!r}) "
                                      "is missing")
            sizes[rel] = source.size(rel)
        offset, length = info.offset, info.length
        if offset + length > sizes[rel]:
            raise CheckpointError(f"{stage.describe()}: data file {source.path / rel} is truncated: tensor {name!r} "
                                  f"needs bytes {offset}..{offset + length}, the file has {sizes[rel]}")
        stored[name] = stored.get(name, 0) + length
        entry = metadata.state_dict_metadata[name]
        if (offset == 0 and length == sizes[rel] and not getattr(info, "transform_descriptors", None)
                and len(entry.chunks) == 1
                and tuple(entry.chunks[0].sizes) == tuple(entry.size) and not any(entry.chunks[0].offsets)):
            whole[name] = rel
    for name, entry in metadata.state_dict_metadata.items():
        nbytes = math.prod(entry.size) * entry.properties.dtype.itemsize
        if not _covers(entry):
            raise CheckpointError(f"{stage.describe()}: tensor {name!r}: its chunks do not cover its shape "
                                  f"{tuple(entry.size)} exactly once")
        if stored.get(name, 0) < nbytes:
            raise CheckpointError(f"{stage.describe()}: tensor {name!r} of shape {tuple(entry.size)} needs "
                                  f"{nbytes} bytes, its data files hold {stored.get(name, 0)}")
    users: dict[str, int] = {}
    for file in whole.values():
        users[file] = users.get(file, 0) + 1
    return {n: f for n, f in whole.items() if users[f] == 1}  # a shared data file is read through DCP


def _read_stage_manifest(source: SourceDir, name: str, index: int, num_layers: int) -> tuple[int, range]:
    rel = f"{name}/{STAGE_FILE}"
    file = source.path / rel
    if source.kind(rel) != "file":
        raise CheckpointError(f"stage {name}: missing stage manifest {file}")
    data = source.read_json(rel)
    try:
        stage, num_stages, (start, stop) = data["stage"], data["num_stages"], data["layers"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"stage {name}: corrupt stage manifest {file} ({type(exc).__name__}: {exc})") from None
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (stage, num_stages, start, stop))
    if not ints or stage != index or num_stages < 1 or not 0 <= start <= stop <= num_layers:
        raise CheckpointError(f"stage {name}: stage manifest {file} is inconsistent ({data}; the folder is stage "
                              f"{index} and the config has {num_layers} layers)")
    return num_stages, range(start, stop)


def _discover_stages(source: SourceDir, cfg: ModelConfig) -> list[Stage]:
    root = source.path
    stage_dirs = {}
    for entry in source.listdir():
        if entry.startswith("pp") and entry[2:].isdigit():
            if not _STAGE_DIR.fullmatch(entry) or source.kind(entry) != "dir":
                raise CheckpointError(f"{root / entry}: not a valid stage folder name (expected pp0, pp1, ...)")
            stage_dirs[int(entry[2:])] = entry
    flat = source.kind(DCP_METADATA_FILE) is not None
    if flat and stage_dirs:
        raise CheckpointError(f"{root}: holds both top-level DCP weights ({DCP_METADATA_FILE}) and stage folders "
                              f"{sorted(stage_dirs.values())}; which one is the checkpoint is ambiguous")
    if flat:
        return [Stage(".", root, 0, range(cfg.num_layers), True, True)]
    if not stage_dirs:
        raise CheckpointError(f"{root}: no weights (neither {root / DCP_METADATA_FILE} nor stage folders pp0/, pp1/, ...)")
    manifests = {k: _read_stage_manifest(source, name, k, cfg.num_layers) for k, name in sorted(stage_dirs.items())}
    declared = {n for n, _ in manifests.values()}
    if len(declared) != 1:
        raise CheckpointError(f"{root}: stage manifests disagree on the number of stages: "
                              + ", ".join(f"pp{k} says {n}" for k, (n, _) in sorted(manifests.items())))
    num_stages = declared.pop()
    present = sorted(stage_dirs)
    for k in range(num_stages):
        if k not in stage_dirs:
            raise CheckpointError(f"{root}: stage pp{k} is missing (present: {', '.join(f'pp{i}' for i in present)}; "
                                  f"the manifests declare {num_stages} stages)")
    beyond = [k for k in present if k >= num_stages]
    if beyond:
        raise CheckpointError(f"{root}: stage pp{beyond[0]} is beyond the {num_stages} stages the manifests declare")
    owner: dict[int, int] = {}
    for k, (_, layers) in sorted(manifests.items()):
        for layer in layers:
            if layer in owner:
                raise CheckpointError(f"{root}: layer {layer} is in two stages, pp{owner[layer]} and pp{k}")
            owner[layer] = k
    for layer in range(cfg.num_layers):
        if layer not in owner:
            raise CheckpointError(f"{root}: layer {layer} is in no stage")
    return [Stage(f"pp{k}", root / f"pp{k}", k, layers, k == 0, k == num_stages - 1)
            for k, (_, layers) in sorted(manifests.items())]


class NativeCheckpointReader(Mapping):
    """A validated, lazy view of a native checkpoint: ``Mapping[str, Tensor]`` in layout order.

    Opening reads config.json, the stage manifests and the DCP metadata only, and checks them
    against ``layout.state_shapes(config)``. ``reader[name]`` loads that one tensor (DCP load of
    the single key into a preallocated tensor); :meth:`load_many` loads several with one DCP call
    per stage. Every returned tensor is owned by the caller: freshly allocated, or a private
    copy-on-write memory map of a data file holding that tensor alone (its pages mapped at once;
    writes to the tensor never reach the file).

    The directory is read as untrusted input (:class:`native.source_dir.SourceDir`): every file
    is opened once, at open time, and held until :meth:`close`; files outside the directory (by a
    symbolic link or a storage record) and special files are refused unless ``follow_symlinks``.
    """

    def __init__(self, path: str | os.PathLike, *, follow_symlinks: bool = False):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory (a native checkpoint is a directory)")
        self.source = SourceDir(self.path, follow_symlinks=follow_symlinks, error=CheckpointError)
        try:
            self._open()
        except BaseException:
            self.source.close()
            raise

    def _open(self) -> None:
        self.config: ModelConfig = _read_config(self.source)
        if self.config.num_layers > MAX_LAYERS:
            raise CheckpointError(f"{self.path / CONFIG_FILE}: {self.config.num_layers} layers, more than the "
                                  f"{MAX_LAYERS} accepted")
        self.stages: list[Stage] = _discover_stages(self.source, self.config)
        expected = layout.state_shapes(self.config)
        self._entries: dict[str, TensorStorageMetadata] = {}
        self._stage_of: dict[str, Stage] = {}
        self._metadata: dict[str, Metadata] = {}
        self._file_of: dict[str, str] = {}
        self._offsets: dict[str, int | None] = {}
        for stage in self.stages:
            metadata = _read_metadata(self.source, stage)
            self._metadata[stage.name] = metadata
            for name, entry in metadata.state_dict_metadata.items():
                if name not in expected:
                    raise CheckpointError(f"{stage.describe()}: extra tensor {name!r} not in the config's layout")
                if name in self._stage_of:
                    raise CheckpointError(f"tensor {name!r} is in two stages, {self._stage_of[name].name} and {stage.name}")
                if not stage.owns(name):
                    raise CheckpointError(f"{stage.describe()}: tensor {name!r} does not belong there "
                                          f"(the stage holds layers {stage.layers.start}..{stage.layers.stop - 1})")
                if tuple(entry.size) != tuple(expected[name]):
                    raise CheckpointError(f"{stage.describe()}: tensor {name!r} has shape {tuple(entry.size)} but the "
                                          f"config's layout says {tuple(expected[name])}")
                self._entries[name] = entry
                self._stage_of[name] = stage
            self._file_of.update(_check_storage(self.source, stage, metadata))
        for name in expected:
            if name not in self._entries:
                layer = layout.layer_of(name)
                where = next((s for s in self.stages if s.owns(name)), None)
                holder = f" ({where.describe()} should hold it)" if where and where.name != "." else ""
                raise CheckpointError(f"missing tensor {name!r}{holder}"
                                      + (f" of layer {layer}" if layer is not None else ""))
        self._names = list(expected)  # layout order, identical to the stored set after the checks

    # -- Mapping ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._entries:
            raise KeyError(name)
        return self.load_many([name])[name]

    def __repr__(self) -> str:
        return f"NativeCheckpointReader({str(self.path)!r}, {len(self)} tensors, {len(self.stages)} stage(s))"

    # -- metadata without data ----------------------------------------------------------------
    def shape_of(self, name: str) -> torch.Size:
        return torch.Size(self._entry(name).size)

    def dtype_of(self, name: str) -> torch.dtype:
        return self._entry(name).properties.dtype

    def extent_of(self, name: str) -> tuple[Path, int] | None:
        """``(file, offset)`` where ``reader[name]``'s bytes lie, as they are, in a data file of its
        own (so a writer can copy them file to file); None for tensors read through DCP."""
        nbytes = self.shape_of(name).numel() * self.dtype_of(name).itemsize
        file = self._file_of.get(name)
        if file is None:
            return None
        path = self.source.proc_path(file)
        if name not in self._offsets:
            with open(path, "rb") as stream:
                self._offsets[name] = _data_offset(stream, nbytes)
        offset = self._offsets[name]
        return None if offset is None else (Path(path), offset)

    def stage_of(self, name: str) -> str:
        """The stage folder holding ``name`` ("." for a single-stage checkpoint)."""
        self._entry(name)
        return self._stage_of[name].name

    def _entry(self, name: str) -> TensorStorageMetadata:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(name) from None

    # -- loading ------------------------------------------------------------------------------
    def load_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Load several tensors (memory-mapped, or one DCP call per stage); in the order asked."""
        names = list(dict.fromkeys(names))
        by_stage: dict[str, dict[str, torch.Tensor]] = {}
        out: dict[str, torch.Tensor] = {}
        for name in names:
            entry = self._entry(name)
            mapped = self._mapped(name, entry)
            if mapped is not None:
                out[name] = mapped
                continue
            by_stage.setdefault(self._stage_of[name].name, {})[name] = torch.empty(
                tuple(entry.size), dtype=entry.properties.dtype)
        for stage_name, tensors in by_stage.items():
            stage = self._stage_of[next(iter(tensors))]
            try:
                with _quiet_dcp():
                    dcp.load(tensors, storage_reader=_StageReader(self.source, stage, self._metadata[stage_name]),
                             no_dist=True)
            except (Exception, CheckpointException) as exc:
                cause = _cause(exc)
                if not isinstance(cause, Exception):
                    raise cause from None
                raise CheckpointError(f"{stage.describe()}: could not read tensor(s) {_few(list(tensors))} from "
                                      f"{stage.path} ({_describe(cause)})") from None
            out.update(tensors)
        return {name: out[name] for name in names}

    def _mapped(self, name: str, entry: TensorStorageMetadata) -> torch.Tensor | None:
        """``name`` memory-mapped from its own data file (private mapping), or None when it is not
        stored alone or the file is not a plain ``torch.save`` archive (DCP then reads it)."""
        file = self._file_of.get(name)
        if file is None:
            return None
        try:
            tensor = torch.load(self.source.proc_path(file), map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None
        if (not isinstance(tensor, torch.Tensor) or tensor.dtype != entry.properties.dtype
                or tuple(tensor.shape) != tuple(entry.size)):
            return None
        if not populate(tensor):
            return None  # unreadable pages: DCP's own read reports it
        if not (tensor.is_contiguous() and tensor.storage_offset() == 0
                and tensor.untyped_storage().nbytes() == tensor.nbytes):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        return tensor

    def load_all(self) -> dict[str, torch.Tensor]:
        return self.load_many(self._names)

    def close(self) -> None:
        """Release the held files (tensors already returned stay valid: they are maps or copies)."""
        self.source.close()

    def __enter__(self) -> "NativeCheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike, *, follow_symlinks: bool = False) -> NativeCheckpointReader:
    """Open and validate a native checkpoint for lazy, tensor-at-a-time reading."""
    return NativeCheckpointReader(path, follow_symlinks=follow_symlinks)


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a whole native checkpoint (merging stage folders). Raises CheckpointError if anything
    is missing, extra, misshapen, duplicated across stages or unreadable."""
    with open_checkpoint(path) as reader:
        return reader.config, reader.load_all()


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
