"""``convcheck convert``: one checkpoint directory in, the other format out.

The source format is detected from its contents. Weights stream from a lazy reader through the
converter's rules into the writer, so the HF side never holds more than one output shard. The
native checkpoint records the HF ``model_type`` and ``generation_config`` it came from in its
config metadata (non-architecture), and keeps tokenizer files in ``hf_files/``, so HF→native→HF
reproduces the directory.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

import native
from native.checkpoint import is_native_checkpoint, open_checkpoint, save_checkpoint

from . import registry
from .errors import ConversionError
from .hf_io import is_hf_checkpoint, open_hf_checkpoint, parse_size, write_hf_checkpoint

DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}
MODEL_TYPE_KEY = "hf_model_type"  # native metadata: the HF model_type this checkpoint came from
GENERATION_KEY = "hf_generation_config"  # native metadata: the HF generation_config.json
HF_FILES_DIR = "hf_files"  # native checkpoint folder keeping tokenizer files for the way back


@dataclass
class Summary:
    direction: str
    model_type: str
    tensors: int
    nbytes: int
    seconds: float
    dst: Path

    def line(self) -> str:
        rate = self.nbytes / max(self.seconds, 1e-9) / 1e6
        return (f"converted {self.model_type} {self.direction}: {self.tensors} tensors, "
                f"{self.nbytes / 1e9:.3f} GB in {self.seconds:.2f} s ({rate:.0f} MB/s) -> {self.dst}")


def detect_format(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise ConversionError(f"{path}: not a directory (expected an HF or native checkpoint directory)")
    if is_hf_checkpoint(path):
        return "hf"
    if is_native_checkpoint(path):
        return "native"
    raise ConversionError(f"{path}: neither an HF checkpoint (config.json with model_type) nor a native checkpoint")


def cast(stream: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """Cast floating tensors to ``dtype``; integer and bool tensors are kept."""
    for name, tensor in stream:
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        yield name, tensor


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or src_real in dst_real.parents:
        raise ConversionError(f"{dst}: the output must not be inside the input {src}")
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None, dtype: str = "keep",
            max_shard_size: str | int = "5GB", overwrite: bool = False, model_type: str | None = None,
            progress: Callable[[str, int], None] | None = None) -> Summary:
    """Convert the checkpoint at ``src`` into the other format at ``dst`` (atomically)."""
    src, dst = Path(src), Path(dst)
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype={dtype!r} must be one of {', '.join(DTYPES)}")
    source_format = detect_format(src)
    target = to or ("native" if source_format == "hf" else "hf")
    if target not in ("hf", "native"):
        raise ConversionError(f"--to={target!r} must be 'hf' or 'native'")
    if target == source_format:
        raise ConversionError(f"{src} is already a {source_format} checkpoint (--to {target})")
    _check_paths(src, dst, overwrite)
    max_bytes = parse_size(max_shard_size)
    counter = _Counter(progress)
    start = time.perf_counter()
    if source_format == "hf":
        model_type = _hf_to_native(src, dst, DTYPES[dtype], overwrite, counter)
    else:
        model_type = _native_to_hf(src, dst, DTYPES[dtype], max_bytes, overwrite, counter, model_type)
    direction = f"{source_format} -> {target}"
    return Summary(direction, model_type, counter.tensors, counter.nbytes, time.perf_counter() - start, dst)


class _Counter:
    def __init__(self, progress):
        self.progress, self.tensors, self.nbytes = progress, 0, 0

    def __call__(self, name: str, nbytes: int) -> None:
        self.tensors += 1
        self.nbytes += nbytes
        if self.progress is not None:
            self.progress(name, nbytes)

    def wrap(self, stream):
        for name, tensor in stream:
            self(name, tensor.numel() * tensor.element_size())
            yield name, tensor


def _hf_to_native(src: Path, dst: Path, dtype, overwrite: bool, counter: _Counter) -> str:
    with open_hf_checkpoint(src) as reader:
        converter = registry.detect(reader.config)
        cfg = converter.import_config(reader.config)
        metadata = {**cfg.metadata, MODEL_TYPE_KEY: converter.model_type}
        if reader.generation_config is not None:
            metadata[GENERATION_KEY] = reader.generation_config
        cfg = dataclasses.replace(cfg, metadata=metadata)
        state = dict(counter.wrap(cast(converter.import_weights(cfg, reader), dtype)))
        from .hf_io import tokenizer_files

        save_checkpoint(dst, cfg, state, overwrite=overwrite, extra_files={
            f"{HF_FILES_DIR}/{f.name}": f for f in tokenizer_files(src)})
    return converter.model_type


def _native_to_hf(src: Path, dst: Path, dtype, max_bytes: int, overwrite: bool, counter: _Counter,
                  model_type: str | None) -> str:
    reader = open_checkpoint(src)
    cfg = reader.config
    metadata = dict(cfg.metadata)
    recorded = metadata.pop(MODEL_TYPE_KEY, None)
    generation = metadata.pop(GENERATION_KEY, None)
    model_type = model_type or recorded
    if model_type is None:
        raise ConversionError(f"{src}: the native checkpoint does not record an HF model_type; pass --model-type "
                              f"(one of {', '.join(registry.names())})")
    converter = registry.get(model_type)
    cfg = dataclasses.replace(cfg, metadata=metadata)
    hf_config = converter.export_config(cfg)
    stream = cast(converter.export_weights(cfg, reader), dtype)
    hf_config["dtype"] = _dtype_name(dtype, reader, cfg)
    hf_files = src / HF_FILES_DIR
    write_hf_checkpoint(dst, hf_config, stream, max_shard_size=max_bytes, generation_config=generation,
                        copy_files_from=hf_files if hf_files.is_dir() else None, overwrite=overwrite,
                        progress=counter)
    return converter.model_type


def _dtype_name(dtype, reader, cfg) -> str:
    """config.json's ``dtype``: the requested one, else the embedding's."""
    if dtype is None:
        dtype = reader.dtype_of("embedding.weight")
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
