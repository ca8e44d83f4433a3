"""The native checkpoint reader: a lazy, validating view of a checkpoint directory.

Reading validates the whole checkpoint against ``layout.state_shapes(config)`` from metadata alone
(no tensor data is read), so a broken checkpoint is refused before any tensor is loaded, and the
lazy reader (:func:`open_checkpoint`) gives the same guarantees as :func:`load_checkpoint`. A
checkpoint is untrusted input: its ``.metadata`` pickle is unpickled by an allow-list
(:mod:`checkpoints.dcp_metadata`), its files are opened once and read through the held
descriptors, and nothing outside its directory is read (:mod:`checkpoints.source_dir`).

A tensor stored alone in its data file is loaded with ``torch.load(file, mmap=True)``: a private
(copy-on-write) memory map, no copy made, its pages mapped in one call (:mod:`checkpoints.pages`);
the file is never modified. Other layouts (several tensors per file, as older saves or other DCP
writers make) go through ``dcp.load`` into a fresh tensor. Either way the caller owns what it gets.
Merging stage folders is per tensor too: nothing loads a whole stage. The reader implements
:class:`checkpoints.source.TensorSource`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from native import layout
from native.config import ModelConfig
from native.model import NativeModel
from native.schema import MAX_LAYERS

from .dcp_metadata import load_metadata
from .native_format import (
    _STAGE_DIR, CONFIG_FILE, DCP_METADATA_FILE, MAX_METADATA_BYTES, STAGE_FILE, CheckpointError,
    Stage, data_offset, dcp_cause, describe_error, few, quiet_dcp, stage_path,
)
from .pages import populate
from .source import LazyReader
from .source_dir import SourceDir


class _HeldFiles(FileSystem):
    """DCP's file system, opening a stage's data files through the descriptors the reader holds
    (:class:`checkpoints.source_dir.SourceDir`): DCP reads the files validated at open time, never
    whatever the paths name by then."""

    def __init__(self, source: SourceDir, stage: Stage):
        super().__init__()
        self.source, self.stage = source, stage

    @contextmanager
    def create_stream(self, path, mode):
        if mode != "rb":
            raise CheckpointError(f"{path}: a checkpoint being read is never written")
        with open(self.source.proc_path(stage_path(self.stage, Path(path).name)), "rb") as stream:
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
    """The stage's DCP metadata, unpickled by :mod:`checkpoints.dcp_metadata` (no code runs) before
    anything else of the stage is read."""
    rel = stage_path(stage, DCP_METADATA_FILE)
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
    return stage_path(stage, rel)


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


class NativeCheckpointReader(LazyReader):
    """A validated, lazy view of a native checkpoint: ``Mapping[str, Tensor]`` in layout order.

    Opening reads config.json, the stage manifests and the DCP metadata only, and checks them
    against ``layout.state_shapes(config)``. ``reader[name]`` loads that one tensor (DCP load of
    the single key into a preallocated tensor); :meth:`load_many` loads several with one DCP call
    per stage. Every returned tensor is owned by the caller: freshly allocated, or a private
    copy-on-write memory map of a data file holding that tensor alone (its pages mapped at once;
    writes to the tensor never reach the file).

    The directory is read as untrusted input (:class:`checkpoints.source_dir.SourceDir`): every file
    is opened once, at open time, and held until :meth:`close`; files outside the directory (by a
    symbolic link or a storage record) and special files are refused unless ``follow_symlinks``.
    """

    error_type = CheckpointError
    describes = "a native checkpoint"

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
    def __contains__(self, name: object) -> bool:
        return name in self._entries

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
                self._offsets[name] = data_offset(stream, nbytes)
        offset = self._offsets[name]
        return None if offset is None else (Path(path), offset)

    def stage_of(self, name: str) -> str:
        """The stage folder holding ``name`` ("." for a single-stage checkpoint)."""
        self._entry(name)
        return self._stage_of[name].name

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
                with quiet_dcp():
                    dcp.load(tensors, storage_reader=_StageReader(self.source, stage, self._metadata[stage_name]),
                             no_dist=True)
            except (Exception, CheckpointException) as exc:
                cause = dcp_cause(exc)
                if not isinstance(cause, Exception):
                    raise cause from None
                raise CheckpointError(f"{stage.describe()}: could not read tensor(s) {few(list(tensors))} from "
                                      f"{stage.path} ({describe_error(cause)})") from None
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



def open_checkpoint(path: str | os.PathLike, *, follow_symlinks: bool = False) -> NativeCheckpointReader:
    """Open and validate a native checkpoint for lazy, tensor-at-a-time reading."""
    return NativeCheckpointReader(path, follow_symlinks=follow_symlinks)


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a whole native checkpoint (merging stage folders). Raises CheckpointError if anything
    is missing, extra, misshapen, duplicated across stages or unreadable."""
    with open_checkpoint(path) as reader:
        return reader.config, reader.load_all()


def load_model(path: str | os.PathLike, *, device=None, dtype: torch.dtype | None = None) -> NativeModel:
    """Build a :class:`native.NativeModel` from a native checkpoint; tensors are adopted as loaded
    (dtype kept unless given)."""
    cfg, state = load_checkpoint(path)
    return NativeModel.from_state(cfg, state, device=device, dtype=dtype)
