"""Writing HF checkpoint directories: a streaming, atomic safetensors writer.

Writing (:func:`write_hf_checkpoint`) streams, and writes safetensors files itself (the format
is an 8-byte length, a JSON header and the raw bytes; ``safetensors.torch.save_file`` would first
copy every tensor into a ``bytes`` object). Shards are cut greedily: tensors go into the current
shard until the next would overflow ``max_shard_size``. Given a ``plan`` (every tensor's name,
dtype and shape, in stream order) the shard layout and headers are fixed before any data, and
each tensor is written at its offset as it arrives: memory holds the tensor in flight, not a
shard. Without a plan a shard accumulates in memory and is written when full. Both give the same
bytes. Output is atomic (``checkpoints.atomic``) and byte-deterministic.

File names and dtypes come from the reader's module (:mod:`checkpoints.hf_reader`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from converters.errors import ConversionError

from .atomic import atomic_directory
from .hf_reader import (
    CONFIG_FILE, GENERATION_CONFIG_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX, SAFETENSORS_NAMES, tokenizer_files,
)
from .native_format import Concatenation
from .pages import write_bytes

# ----------------------------------------------------------------------------------- sizes
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
          "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_size(text: str | int) -> int:
    """``"5GB"`` → 5·10⁹, ``"2GiB"`` → 2·2³⁰, ``"500MB"``, ``"1.5GB"``, ``"123"`` (bytes). Case-insensitive."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.fullmatch(str(text))
        if not match:
            raise ConversionError(f"max shard size {text!r}: expected a size like 500MB, 5GB, 2GiB or a number of bytes")
        number, unit = match.group(1), (match.group(2) or "").lower()
        value = int(float(number) * _UNITS[unit]) if "." in number else int(number) * _UNITS[unit]
    if value <= 0:
        raise ConversionError(f"max shard size {text!r} must be positive")
    return value


# --------------------------------------------------------------------------------- writing
def _json_text(value: Any, file: str) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{file}: cannot be written as JSON ({exc})") from None


def shard_file_name(k: int, n: int) -> str:
    """The name of shard ``k`` (0-based) of ``n``: ``model-0000{k+1}-of-0000{n}.safetensors``."""
    return f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def _blocks(value: torch.Tensor | Concatenation) -> tuple:
    """What to write for ``value``, in order: a concatenation's blocks (file slices among them are
    copied by the kernel, :func:`checkpoints.pages.write_bytes`), or the tensor itself as a contiguous
    CPU tensor (no copy when it is one already)."""
    if isinstance(value, Concatenation):
        return value.blocks
    t = value.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return (t.contiguous(),)


class _ShardFile:
    """One safetensors file, laid out before any data: tensors sorted by item size (largest first,
    so every tensor is aligned to its item size, as safetensors itself sorts) then by name; the
    header is written at once and each tensor's bytes at its offset whenever it arrives."""

    def __init__(self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]]):
        self.path = path
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        self.slots: dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]] = {}
        offset = 0
        for name, dtype, shape in sorted(entries, key=lambda e: (-e[1].itemsize, e[0])):
            if dtype not in SAFETENSORS_NAMES:
                raise ConversionError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
            size = _numel(shape) * dtype.itemsize
            header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.slots[name] = (offset, size, dtype, tuple(shape))
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        self.base = 8 + len(text)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _write_all(self.fd, memoryview(struct.pack("<Q", len(text)) + text), 0, path)
        os.ftruncate(self.fd, self.base + offset)
        self.missing = set(self.slots)

    def write(self, name: str, tensor: torch.Tensor | Concatenation) -> None:
        offset, size, dtype, shape = self.slots[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ConversionError(f"tensor {name!r}: {tensor.dtype} {tuple(tensor.shape)}, the write was planned "
                                  f"with {dtype} {shape}")
        position = self.base + offset
        try:
            for block in _blocks(tensor):
                position = write_bytes(self.fd, block, position)
        except OSError as exc:
            raise ConversionError(f"writing {self.path.name} failed ({exc})") from None
        self.missing.discard(name)

    def close(self) -> None:
        os.close(self.fd)
        if self.missing:
            raise ConversionError(f"{self.path.name}: planned tensor(s) {', '.join(sorted(self.missing)[:3])} were "
                                  "never produced")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _write_all(fd: int, data: memoryview, position: int, path: Path) -> None:
    try:
        while len(data):
            written = os.pwrite(fd, data, position)
            data, position = data[written:], position + written
    except OSError as exc:
        raise ConversionError(f"writing {path.name} failed ({exc})") from None


def plan_shards(entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], max_bytes: int
                ) -> list[list[tuple[str, torch.dtype, tuple[int, ...]]]]:
    """Greedy shards in stream order: the next tensor opens a new shard when it would push the
    current one past ``max_bytes`` (a tensor larger than that gets a shard of its own)."""
    shards: list[list] = []
    size = 0
    for entry in entries:
        nbytes = _numel(entry[2]) * entry[1].itemsize
        if not shards or (shards[-1] and size + nbytes > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def _shard_names(count: int) -> list[str]:
    return [SAFETENSORS_FILE] if count == 1 else [shard_file_name(k, count) for k in range(count)]


def _checked(item, seen: set[str]) -> tuple[str, torch.Tensor]:
    try:
        name, tensor = item
    except (TypeError, ValueError):
        raise ConversionError(f"tensor stream yielded {type(item).__name__}, expected (name, tensor)") from None
    if not isinstance(name, str) or not name:
        raise ConversionError(f"tensor name {name!r}: expected a non-empty string")
    if not isinstance(tensor, (torch.Tensor, Concatenation)):
        raise ConversionError(f"tensor {name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
    if name in seen:
        raise ConversionError(f"tensor {name!r} was produced twice")
    seen.add(name)
    return name, tensor


def _write_planned(directory: Path, tensors, plan, max_bytes: int, progress) -> tuple[dict[str, str], int]:
    """Shards fixed from the plan; each tensor written at its place as it arrives."""
    plan = [(name, dtype, tuple(int(d) for d in shape)) for name, dtype, shape in plan]
    if not plan:
        raise ConversionError("no tensors to write: the plan is empty")
    shards = plan_shards(plan, max_bytes)
    names = _shard_names(len(shards))
    file_of = {entry[0]: k for k, shard in enumerate(shards) for entry in shard}
    if len(file_of) != len(plan):
        raise ConversionError("the write plan names a tensor twice")
    files: dict[int, _ShardFile] = {}
    left = [len(shard) for shard in shards]
    seen: set[str] = set()
    try:
        for item in tensors:
            name, tensor = _checked(item, seen)
            del item
            if name not in file_of:
                raise ConversionError(f"tensor {name!r} was produced but is not in the write plan")
            k = file_of[name]
            if k not in files:
                files[k] = _ShardFile(directory / names[k], shards[k])
            files[k].write(name, tensor)
            nbytes = tensor.numel() * tensor.element_size()
            del tensor
            left[k] -= 1
            if left[k] == 0:
                files.pop(k).close()
            if progress is not None:
                progress(name, nbytes)
    finally:
        for file in files.values():
            os.close(file.fd)
    missing = [entry[0] for entry in plan if entry[0] not in seen]
    if missing:
        raise ConversionError(f"tensor(s) {', '.join(map(repr, missing[:3]))} of the write plan were never produced")
    total = sum(_numel(shape) * dtype.itemsize for _, dtype, shape in plan)
    return {name: names[file_of[name]] for name in sorted(file_of)}, total


def _write_accumulated(directory: Path, tensors, max_bytes: int, progress) -> tuple[dict[str, str], int]:
    """No plan: a shard accumulates in memory until the next tensor would overflow it."""
    current: dict[str, torch.Tensor] = {}
    size = total = 0
    written: list[list[str]] = []
    seen: set[str] = set()

    def flush():
        nonlocal current, size
        if current:
            k = len(written)
            shard = _ShardFile(directory / f".shard-{k:05d}.safetensors.part",
                               [(n, t.dtype, tuple(t.shape)) for n, t in current.items()])
            try:
                for n, t in current.items():
                    shard.write(n, t)
            finally:
                shard.close()
            written.append(list(current))
            current, size = {}, 0

    for item in tensors:
        name, tensor = _checked(item, seen)
        del item
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.dtype not in SAFETENSORS_NAMES:
            raise ConversionError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in safetensors")
        if current and size + nbytes > max_bytes:
            flush()
        current[name] = tensor.detach() if isinstance(tensor, torch.Tensor) else tensor
        size += nbytes
        total += nbytes
        del tensor
        if progress is not None:
            progress(name, nbytes)
    flush()
    if not written:
        raise ConversionError("no tensors to write: the tensor stream was empty")
    names = _shard_names(len(written))
    for k, final in enumerate(names):
        os.replace(directory / f".shard-{k:05d}.safetensors.part", directory / final)
    return {name: names[k] for k, shard in enumerate(written) for name in shard}, total


def write_hf_checkpoint(dst: str | os.PathLike, config: dict,
                        tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor], *,
                        max_shard_size: int | str = 5 * 10**9, generation_config: dict | None = None,
                        copy_files_from: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
                        overwrite: bool = False, progress: Callable[[str, int], None] | None = None,
                        plan: Iterable[tuple[str, torch.dtype, tuple[int, ...]]] | None = None) -> Path:
    """Write an HF checkpoint directory at ``dst``, streaming ``tensors`` shard by shard.

    Tensors go into the current shard until the next one would push it past ``max_shard_size``
    bytes (an int, or a string for :func:`parse_size`). With ``plan`` (``(name, dtype, shape)`` of
    every tensor, in stream order; the stream may deliver them in any order) each tensor is
    written to its shard as it arrives, so memory holds the tensor in flight; without it a shard
    is held in memory until full. Tensors must not be modified after they are yielded.
    ``tensors`` may also be a mapping (its ``items()`` are used). Files carry the metadata
    ``{"format": "pt"}``. One shard is written as ``model.safetensors``; several as
    ``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json`` (``total_size``
    and a sorted ``weight_map``). ``config.json`` (and ``generation_config.json`` when given)
    are written with sorted keys and indent 2; tokenizer files are copied from
    ``copy_files_from`` (a directory, read as :func:`tokenizer_files` does, or ``name -> file``
    already chosen, e.g. a reader's held ``extra_files``). Same input, same bytes. Atomic: nothing appears at ``dst`` unless
    everything was written; an existing ``dst`` is refused unless ``overwrite``.
    ``progress(name, nbytes)`` is called after each tensor is taken.
    """
    max_bytes = parse_size(max_shard_size)
    if isinstance(tensors, Mapping):
        tensors = tensors.items()
    if not isinstance(config, dict):
        raise ConversionError(f"config.json: expected a dict, got {type(config).__name__}")
    config_text = _json_text(config, CONFIG_FILE)
    generation_text = None if generation_config is None else _json_text(generation_config, GENERATION_CONFIG_FILE)
    if copy_files_from is None:
        extra_files: dict[str, str | os.PathLike] = {}
    elif isinstance(copy_files_from, Mapping):
        extra_files = dict(copy_files_from)
    else:
        extra_files = {f.name: f for f in tokenizer_files(copy_files_from)}
    with atomic_directory(dst, overwrite=overwrite, error=ConversionError) as tmp:
        if plan is not None:
            weight_map, total = _write_planned(tmp, tensors, plan, max_bytes, progress)
        else:
            weight_map, total = _write_accumulated(tmp, tensors, max_bytes, progress)
        if len(set(weight_map.values())) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / SAFETENSORS_INDEX).write_text(_json_text(index, SAFETENSORS_INDEX), encoding="utf-8")
        (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        if generation_text is not None:
            (tmp / GENERATION_CONFIG_FILE).write_text(generation_text, encoding="utf-8")
        for name, file in sorted(extra_files.items()):
            if name in (CONFIG_FILE, GENERATION_CONFIG_FILE) or (tmp / name).exists():
                continue
            try:
                shutil.copyfile(file, tmp / name)
            except OSError as exc:
                raise ConversionError(f"{dst}: copying {name} failed ({exc.strerror or exc})") from None
    return Path(dst)
