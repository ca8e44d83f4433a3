"""Reading HF checkpoint directories: a validated lazy reader (:class:`HFCheckpointReader`).

Reading (:func:`open_hf_checkpoint`) understands, in transformers' order of preference:

- ``model.safetensors``
- ``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors`` shards
- read-only fallback: ``pytorch_model.bin``, or ``pytorch_model.bin.index.json`` + shards

The directory is untrusted input (:class:`checkpoints.source_dir.SourceDir`): every file is opened
once, at open time, through the directory's own descriptor, and every later read goes through
the held descriptor, so a checkpoint replaced while it is read is read as the version opened;
files reached by a link leading outside the directory, and special files, are refused. Opening
parses every safetensors header itself (8-byte length + strict JSON) and checks it as
safetensors does (types, no duplicates, data ranges tiling the file), and checks config.json's
values (:mod:`converters.config_values`), so a truncated, corrupt or hostile file is refused at
open time rather than half-way through a conversion. Tensor data is read only on
``reader[name]``: each tensor is a private (copy-on-write) memory map of exactly its byte range,
so it costs no copy and owns its storage (a rename passes it through untouched); its pages are
mapped in one call.

Also the HF file names and dtypes, which the writer (:mod:`checkpoints.hf_writer`) shares.
"""
from __future__ import annotations

import fnmatch
import math
import mmap
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from converters.config_values import check_config_values, check_finite
from converters.errors import ConversionError

from .pages import populate
from .source import LazyReader
from .source_dir import SourceDir, parse_json

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

#: Files copied verbatim from ``copy_files_from`` (tokenizer and chat template), by glob.
TOKENIZER_PATTERNS = ("tokenizer*.json", "tokenizer.model", "*.model", "special_tokens_map.json",
                      "added_tokens.json", "vocab.json", "merges.txt", "chat_template*")

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)
SAFETENSORS_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}

_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


# --------------------------------------------------------------------------------- reading
def _read_json_object(source: SourceDir, rel: str) -> dict:
    """A JSON object file of the source (strict JSON: :func:`checkpoints.source_dir.parse_json`)."""
    data = source.read_json(rel)
    if not isinstance(data, dict):
        raise ConversionError(f"{source.path / rel}: expected a JSON object, got {type(data).__name__}")
    return data


def read_safetensors_header(file: Path, *, source: SourceDir | None = None,
                            rel: str | None = None) -> dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]:
    """Parse and check a safetensors header without reading tensor data.

    Returns ``name -> (dtype, shape, begin, end)`` with absolute byte offsets in the file. The
    checks are safetensors' own, made before any data is touched: a header of at most
    :data:`_MAX_HEADER` bytes of strict JSON (no key twice, bounded nesting), entries with a known
    dtype, integer dimensions and offsets consistent with them, and data ranges that tile the data
    section exactly (inside the file, no overlap, no gap). Raises ConversionError naming the file
    (and tensor). ``source``/``rel``: read through an open :class:`checkpoints.source_dir.SourceDir`.
    """
    if source is None:
        with SourceDir(Path(file).parent, follow_symlinks=True, error=ConversionError) as own:
            return read_safetensors_header(file, source=own, rel=Path(file).name)
    size = source.size(rel)
    head = source.read(rel, 0, 8)
    if len(head) < 8:
        raise ConversionError(f"{file}: truncated safetensors file ({size} bytes, no header length)")
    (length,) = struct.unpack("<Q", head)
    if length > _MAX_HEADER or 8 + length > size:
        raise ConversionError(f"{file}: truncated or corrupt safetensors file (header of {length} bytes "
                              f"declared, file has {size} bytes)")
    header = parse_json(source.read(rel, 8, length), f"{file}: corrupt safetensors header", ConversionError)
    if not isinstance(header, dict):
        raise ConversionError(f"{file}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ConversionError(f"{file}: corrupt safetensors header (__metadata__ must map strings to strings)")
    base = 8 + length
    out: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
    for name, entry in header.items():
        dtype, shape, begin, end = _header_entry(file, name, entry)
        out[name] = (dtype, shape, base + begin, base + end)
    _check_tiling(file, out, base, size)
    return out


def _integers(value, count: int | None = None) -> bool:
    return (isinstance(value, list) and (count is None or len(value) == count)
            and all(type(v) is int and v >= 0 for v in value))


def _header_entry(file: Path, name: str, entry) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """One tensor's entry, every field of the type safetensors gives it (``2.0``, ``"2"`` or
    ``true`` as a dimension is refused, not rounded or cast)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ConversionError(f"{file}: corrupt safetensors header entry for tensor {name!r} (expected exactly "
                              f"dtype, shape and data_offsets, got {entry!r:.200})")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        raise ConversionError(f"{file}: tensor {name!r} has unsupported dtype {dtype_name!r}")
    if not _integers(shape):
        raise ConversionError(f"{file}: tensor {name!r} has shape {shape!r:.200}; dimensions must be non-negative "
                              "integers")
    if not _integers(offsets, 2):
        raise ConversionError(f"{file}: tensor {name!r} has data_offsets {offsets!r:.200}; expected two "
                              "non-negative integers")
    dtype = SAFETENSORS_DTYPES[dtype_name]
    begin, end = offsets
    if not begin <= end or end - begin != math.prod(shape) * dtype.itemsize:
        raise ConversionError(f"{file}: tensor {name!r} has data offsets [{begin}, {end}) inconsistent with "
                              f"dtype {dtype_name} and shape {list(shape)}")
    return dtype, tuple(shape), begin, end


def _check_tiling(file: Path, entries: dict, base: int, size: int) -> None:
    """The data ranges, sorted, follow each other from the end of the header to the end of the
    file: none outside the file, none overlapping another (two tensors sharing bytes), no gap."""
    for name, (_, _, _, end) in entries.items():
        if end > size:
            raise ConversionError(f"{file}: truncated safetensors file: tensor {name!r} needs bytes up to "
                                  f"{end}, the file has {size}")
    position, previous = base, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin < position:
            raise ConversionError(f"{file}: tensors {previous!r} and {name!r} overlap (bytes {begin - base}.."
                                  f"{position - base} of the data); refused")
        if begin > position:
            raise ConversionError(f"{file}: corrupt safetensors file: bytes {position - base}..{begin - base} of "
                                  f"the data belong to no tensor (before {name!r})")
        position, previous = end, name
    if position != size:
        raise ConversionError(f"{file}: corrupt safetensors file: {size - position} bytes after the last tensor "
                              "belong to no tensor")


def _shard_name(index_file: Path, name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ConversionError(f"{index_file}: weight_map names {name!r}, which is not a file in this directory")
    return name


class HFCheckpointReader(LazyReader):
    """A validated, lazy view of an HF checkpoint directory: ``Mapping[str, Tensor]``.

    ``config`` is config.json as a dict; ``generation_config`` the generation_config.json dict or
    None. Keys iterate in sorted order. ``reader[name]`` returns that one tensor, shared with no
    other returned tensor and owning its storage: from safetensors it is a private (copy-on-write)
    memory map of exactly its bytes (mapped at once, no copy), and in-place edits never reach the
    file; from ``.bin`` it is a copy. ``shape_of``/``dtype_of`` answer from the
    headers without reading data. The files are held open from opening to :meth:`close`: a
    replacement of the directory meanwhile does not reach the reader.
    """

    error_type = ConversionError
    describes = "an HF checkpoint"

    def _open(self) -> None:
        source = self.source
        if source.kind(CONFIG_FILE) != "file":
            raise ConversionError(f"{self.path / CONFIG_FILE}: missing (an HF checkpoint needs config.json)")
        self.config: dict = _read_json_object(source, CONFIG_FILE)
        check_config_values(self.config, str(self.path / CONFIG_FILE))
        self.generation_config: dict | None = (_read_json_object(source, GENERATION_CONFIG_FILE)
                                               if source.kind(GENERATION_CONFIG_FILE) == "file" else None)
        if self.generation_config is not None:
            check_finite(self.generation_config, str(self.path / GENERATION_CONFIG_FILE))
        self._file_of: dict[str, str] = {}
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        self._bins: dict[str, dict[str, torch.Tensor]] = {}
        layouts = ((SAFETENSORS_FILE, "safetensors", None), (SAFETENSORS_INDEX, "safetensors", SAFETENSORS_INDEX),
                   (BIN_FILE, "bin", None), (BIN_INDEX, "bin", BIN_INDEX))  # the first one present is read
        found = next(((file, kind, index) for file, kind, index in layouts if source.kind(file) == "file"), None)
        if found is None:
            raise ConversionError(f"{self.path}: no weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {BIN_FILE} "
                                  f"or {BIN_INDEX})")
        file, self.format, self.index = found
        files = {file: None} if self.index is None else self._read_index(self.index)
        (self._open_safetensors if self.format == "safetensors" else self._open_bins)(files)
        self._names = sorted(self._file_of)
        self.extra_files: dict[str, str] = {name: self.source.proc_path(name) for name in tokenizer_names(source)}
        """Tokenizer files (top level, :data:`TOKENIZER_PATTERNS`): name -> a path to the held file."""

    # -- opening ------------------------------------------------------------------------------
    def _read_index(self, name: str) -> dict[str, list[str] | None]:
        """``shard -> the tensor names the index assigns to it``."""
        file = self.path / name
        data = _read_json_object(self.source, name)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{file}: missing or empty 'weight_map'")
        shards: dict[str, list[str] | None] = {}
        for tensor, shard in weight_map.items():
            shards.setdefault(_shard_name(file, shard), []).append(tensor)
        for shard, tensors in shards.items():
            if self.source.kind(shard) != "file":
                raise ConversionError(f"{file}: names shard {shard} (holding {tensors[0]!r}), which is missing "
                                      f"from {self.path}")
        return shards

    def _claim(self, name: str, shard: str, listed: set[str] | None) -> None:
        if name in self._file_of:
            raise ConversionError(f"{self.path}: tensor {name!r} is in two shards, {self._file_of[name]} and {shard}")
        if listed is not None and name not in listed:
            raise ConversionError(f"{self.path / shard}: holds tensor {name!r}, which the index "
                                  f"{self.index} does not assign to it")
        self._file_of[name] = shard

    def _check_listed(self, shard: str, listed: list[str] | None, present: Iterable[str]) -> None:
        if listed is None:
            return
        present = set(present)
        for name in listed:
            if name not in present:
                raise ConversionError(f"{self.path / self.index}: lists tensor {name!r} in shard {shard}, "
                                      f"but {shard} does not hold it")

    def _open_safetensors(self, shards: dict[str, list[str] | None]) -> None:
        self._headers: dict[str, dict] = {}
        for shard, listed in shards.items():
            header = read_safetensors_header(self.path / shard, source=self.source, rel=shard)
            self._check_listed(shard, listed, header)
            wanted = set(listed) if listed is not None else None
            for name, (dtype, shape, _, _) in header.items():
                self._claim(name, shard, wanted)
                self._entries[name] = (dtype, shape)
            self._headers[shard] = header

    def _open_bins(self, shards: dict[str, list[str] | None]) -> None:
        for shard, listed in shards.items():
            file = self.path / shard
            held = self.source.proc_path(shard)
            try:  # weights_only: torch's restricted unpickler (sound from torch 2.6, the lower bound)
                try:
                    data = torch.load(held, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
                    data = torch.load(held, map_location="cpu", weights_only=True)  # legacy (non-zip) format
            except Exception as exc:
                raise ConversionError(f"{file}: unreadable PyTorch weights file ({type(exc).__name__}: "
                                      f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
            if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
                raise ConversionError(f"{file}: expected a dict of tensor name to tensor")
            self._check_listed(shard, listed, data)
            wanted = set(listed) if listed is not None else None
            for name, tensor in data.items():
                self._claim(name, shard, wanted)
                self._entries[name] = (tensor.dtype, tuple(tensor.shape))
            self._bins[shard] = data

    # -- Mapping ------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._file_of

    def __repr__(self) -> str:
        return f"HFCheckpointReader({str(self.path)!r}, {len(self)} tensors, {self.format})"

    def shape_of(self, name: str) -> torch.Size:
        return torch.Size(self._entry(name)[1])

    def dtype_of(self, name: str) -> torch.dtype:
        return self._entry(name)[0]

    def file_of(self, name: str) -> str:
        """The weights file (relative to the directory) holding ``name``."""
        self._entry(name)
        return self._file_of[name]

    def extent_of(self, name: str) -> tuple[Path, int] | None:
        """``(file, offset)`` where ``reader[name]``'s bytes lie, as they are, in a safetensors
        file (so a writer can copy them file to file); None for ``.bin`` weights."""
        self._entry(name)
        if self.format != "safetensors":
            return None
        shard = self._file_of[name]
        return Path(self.source.proc_path(shard)), self._headers[shard][name][2]

    def load_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Read several tensors, opening each file once; returned in the order asked."""
        names = list(dict.fromkeys(names))
        by_file: dict[str, list[str]] = {}
        for name in names:
            self._entry(name)
            by_file.setdefault(self._file_of[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        for shard, wanted in by_file.items():
            file = self.path / shard
            if self.format == "bin":
                for name in wanted:
                    out[name] = self._bins[shard][name].clone(memory_format=torch.contiguous_format)
                continue
            header = self._headers[shard]
            for name in wanted:
                dtype, shape, begin, end = header[name]
                out[name] = map_tensor(file, dtype, shape, begin, end, name, fd=self.source.open(shard))
        return {name: out[name] for name in names}

    def close(self) -> None:
        """Drop the memory maps of ``.bin`` files and release the held files (tensors already
        returned stay valid: they are maps or copies)."""
        self._bins.clear()
        self.source.close()



def map_tensor(file: str | Path, dtype: torch.dtype, shape: tuple[int, ...], begin: int, end: int,
               name: str = "", fd: int | None = None) -> torch.Tensor:
    """Bytes ``[begin, end)`` of ``file`` as a tensor: a private (copy-on-write) memory map of that
    range alone, owning its storage (offset 0, exactly its bytes), its pages mapped at once
    (:func:`checkpoints.pages.populate`: a conversion reads every byte, and bulk mapping is faster).
    ``fd``: the file's descriptor, held by a reader (then ``file`` only names it in messages)."""
    if end == begin:
        return torch.empty(shape, dtype=dtype)
    start = begin - begin % mmap.ALLOCATIONGRANULARITY
    try:
        own = os.open(file, os.O_RDONLY) if fd is None else None
        try:
            mapped = mmap.mmap(own if fd is None else fd, end - start, offset=start, access=mmap.ACCESS_COPY)
        finally:
            if own is not None:
                os.close(own)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{file}: could not read tensor {name!r} ({type(exc).__name__}: {exc})") from None
    numel = (end - begin) // dtype.itemsize
    tensor = torch.frombuffer(mapped, dtype=dtype, count=numel, offset=begin - start).view(shape)
    if not populate(tensor):
        raise ConversionError(f"{file}: could not read tensor {name!r} (the file is shorter than its header says; "
                              "was it truncated while being read?)")
    return tensor


def open_hf_checkpoint(path: str | os.PathLike, *, follow_symlinks: bool = False) -> HFCheckpointReader:
    """Open and validate an HF checkpoint directory for lazy reading (untrusted input: see
    :class:`checkpoints.source_dir.SourceDir`; ``follow_symlinks`` reads links leading outside it)."""
    return HFCheckpointReader(path, follow_symlinks=follow_symlinks)


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """Cheap detection (for the CLI): config.json is a JSON object with ``model_type``. Never
    opens a special file (a FIFO would block)."""
    try:
        with SourceDir(path, follow_symlinks=True, error=ConversionError) as source:
            data = source.read_json(CONFIG_FILE) if source.kind(CONFIG_FILE) == "file" else None
    except ConversionError:
        return False
    return isinstance(data, dict) and "model_type" in data


def tokenizer_names(source: SourceDir, folder: str = ".") -> list[str]:
    """Names of ``folder``'s entries matching :data:`TOKENIZER_PATTERNS` that are files, sorted. A
    matching special file or link leading outside is refused (never silently left out)."""
    names = []
    for name in source.listdir(folder):
        if any(fnmatch.fnmatchcase(name, pat) for pat in TOKENIZER_PATTERNS):
            rel = name if folder == "." else f"{folder}/{name}"
            if source.kind(rel) == "file":
                names.append(name)
    return names


def tokenizer_files(src: str | os.PathLike, *, follow_symlinks: bool = False) -> list[Path]:
    """Top-level regular files of ``src`` matching :data:`TOKENIZER_PATTERNS`, sorted by name. A
    matching special file, or a link leading outside ``src`` (unless ``follow_symlinks``), is
    refused naming it."""
    root = Path(src)
    if not root.is_dir():
        raise ConversionError(f"{root}: not a directory to copy tokenizer files from")
    with SourceDir(root, follow_symlinks=follow_symlinks, error=ConversionError) as source:
        return [root / name for name in tokenizer_names(source)]
