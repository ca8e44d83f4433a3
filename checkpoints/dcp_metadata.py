"""DCP's ``.metadata`` file, read without executing it.

``torch.distributed.checkpoint`` stores a checkpoint's metadata as a pickle, and its own reader
unpickles it with the full unpickler: a downloaded checkpoint could run any code on ``load``.
:func:`load_metadata` unpickles with :class:`MetadataUnpickler`, which resolves only the classes
DCP's metadata is made of and the torch types they hold (sizes, dtypes, layouts, memory formats);
any other global (``os.system``, ``builtins.eval``, a class with a harmful ``__reduce__``) is
refused before it is looked up, so nothing runs. The result is then checked field by field
(:func:`check_structure`): every tensor entry, chunk and storage record has the types DCP gives
them, so later code never meets an object a crafted pickle slipped in.
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Callable

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata, Metadata, MetadataIndex, TensorProperties, TensorStorageMetadata,
)

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
#: (module, name) pairs a DCP ``.metadata`` pickle may name, and nothing else
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    (_METADATA_MODULE, "Metadata"), (_METADATA_MODULE, "MetadataIndex"),
    (_METADATA_MODULE, "TensorStorageMetadata"), (_METADATA_MODULE, "BytesStorageMetadata"),
    (_METADATA_MODULE, "ChunkStorageMetadata"), (_METADATA_MODULE, "TensorProperties"),
    (_METADATA_MODULE, "StorageMeta"), (_METADATA_MODULE, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # StorageMeta.checkpoint_id of DCP's own writer
})


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and torch dtypes, and no
    persistent ids (which DCP metadata never holds)."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which DCP metadata never holds (a pickle "
                                     "that would run code is refused unread)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("holds a persistent id, which DCP metadata never does")


def load_metadata(data: bytes, where: str, error: Callable[[str], Exception]) -> Metadata:
    """The :class:`Metadata` pickled in ``data`` (the bytes of ``where``), or ``error(message)``."""
    try:
        metadata = MetadataUnpickler(io.BytesIO(data)).load()
    except RecursionError:
        raise error(f"corrupt DCP metadata file {where} (nested too deeply)") from None
    except Exception as exc:  # unpickling garbage raises almost anything
        raise error(f"corrupt DCP metadata file {where} ({type(exc).__name__}: {exc})") from None
    problem = check_structure(metadata)
    if problem:
        raise error(f"corrupt DCP metadata file {where} ({problem})")
    return metadata


def _size(value) -> bool:
    return isinstance(value, torch.Size) and all(type(d) is int and d >= 0 for d in value)


def check_structure(metadata) -> str | None:
    """What is wrong with ``metadata``'s shape as DCP metadata of tensors, or None."""
    if not isinstance(metadata, Metadata):
        return f"not a DCP Metadata object but {type(metadata).__name__}"
    entries, storage = metadata.state_dict_metadata, metadata.storage_data
    if not isinstance(entries, dict):
        return "state_dict_metadata is not a dict"
    for name, entry in entries.items():
        if not isinstance(name, str):
            return f"a tensor name {name!r} that is not a string"
        if not isinstance(entry, TensorStorageMetadata):
            return f"entry {name!r} is not a tensor"
        if (not isinstance(entry.properties, TensorProperties) or not isinstance(entry.properties.dtype, torch.dtype)
                or not _size(entry.size) or not isinstance(entry.chunks, list)):
            return f"entry {name!r} has malformed properties, size or chunks"
        for chunk in entry.chunks:
            if (not isinstance(chunk, ChunkStorageMetadata) or not _size(chunk.offsets) or not _size(chunk.sizes)
                    or len(chunk.offsets) != len(entry.size) or len(chunk.sizes) != len(entry.size)
                    or any(o + s > d for o, s, d in zip(chunk.offsets, chunk.sizes, entry.size))):
                return f"entry {name!r} has a chunk outside its tensor"
    if not isinstance(storage, dict):
        return "storage_data is not a dict"
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(index.fqn, str) or index.fqn not in entries:
            return f"storage record {index!r} names no tensor of the metadata"
        if (not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str)
                or type(info.offset) is not int or type(info.length) is not int
                or info.offset < 0 or info.length < 0
                or not isinstance(getattr(info, "transform_descriptors", None) or [], (list, tuple))):
            return f"storage record of {index.fqn!r} is malformed"
    return None
