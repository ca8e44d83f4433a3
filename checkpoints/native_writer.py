"""The native checkpoint writer: streams ``(name, tensor)`` pairs into DCP stage folders.

Bounded memory whatever the model size. :func:`write_checkpoint` (which :func:`save_checkpoint` is
built on) makes one ordinary ``dcp.save`` per stage folder, whose planner is given ``meta`` tensors
(names, shapes and dtypes known up front from the config) and whose ``resolve_data`` pulls each
tensor from the caller's stream only when DCP writes it. DCP writes items in plan order (one writer
thread), so a stream produced in plan order is written tensor by tensor: peak memory is the tensor
in flight (plus whatever the producer holds, e.g. one rule's outputs). A tensor arriving before its
turn is held until DCP asks for it (correct, but memory then grows: callers order their stream).
The DCP option ``single_file_per_rank=False`` gives each tensor its own ``.distcp`` file: DCP's
writer keeps a reference to every tensor of the file it is writing until the file is closed, so
with one file per stage a stage would sit in memory; with one file per tensor only the tensor in
flight does (and reads can map each file, see :mod:`checkpoints.native_reader`). The data files are
written by this module, not DCP (``_DeterministicWriter.write_data``): the same ``torch.save`` bytes
and names, but the archive is saved without data and the tensor's bytes are then written at their
offset, straight from a view or block by block from a :class:`Concatenation` (never assembled in
memory). The zip CRC of ``torch.save`` is skipped: it cost as much as the write itself, and DCP
never checks it.

Writing its own data files makes this module depend on torch's private ``_StorageInfo`` (the
record DCP's metadata keeps per tensor): it is kept here, in the writer alone, so a torch upgrade
that changes it touches one module. Output is atomic (:mod:`checkpoints.atomic`).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.futures import Future
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, _StorageInfo
from torch.distributed.checkpoint.planner import WriteItemType
from torch.distributed.checkpoint.storage import WriteResult

from native import layout
from native.config import ModelConfig

from .atomic import atomic_directory
from .native_format import (
    _STAGE_DIR, CONFIG_FILE, DCP_METADATA_FILE, STAGE_FILE, CheckpointError, Concatenation, Stage, check_state_keys, data_offset,
    dcp_cause, describe_error, few, quiet_dcp, stage_ranges,
)
from .pages import write_bytes


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
    bytes before and after the data. Then each block is written at the
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
    offset = data_offset(stream, value.nbytes)
    if offset is None:
        raise CheckpointError(f"{path}: torch.save wrote an archive without the expected data record")
    stream.seek(0)
    head = stream.read(offset)
    stream.seek(offset + value.nbytes)
    return head, stream.read()


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
            raise CheckpointError(f"tensor(s) {few(sorted(self.pending))} were produced but not written")


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
        with quiet_dcp(), _no_crc():
            dcp.save(planned, storage_writer=writer, planner=_StreamingPlanner(source), no_dist=True)
    except CheckpointException as exc:
        if source.error is not None:  # the stream's own refusal (or an interrupt), as itself
            error, source.error = source.error, None
            raise error.with_traceback(error.__traceback__) from None
        cause = dcp_cause(exc)
        if not isinstance(cause, Exception):  # KeyboardInterrupt and friends stay what they are
            raise cause from None
        raise CheckpointError(f"writing DCP weights to {directory} failed ({describe_error(cause)})") from cause


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
