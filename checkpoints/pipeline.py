"""``convcheck convert``: one checkpoint directory in, the other format out.

The source format is detected from its contents. Both directions stream (``checkpoints.plan``
plans them before reading any tensor; see the README's "Converting real checkpoints"):

- HF → native: safetensors tensors are memory-mapped one at a time, run through the converter's
  weight rules and pulled by the native writer as DCP writes them (``checkpoints.native_writer.
  write_checkpoint``): memory holds one rule's tensors, never the model.
- native → HF: the native reader maps one tensor at a time; the HF writer lays out every shard
  and header from the plan and writes each tensor at its offset as it arrives.

The native checkpoint records the HF ``model_type``, ``generation_config`` and FP8 quantization it
came from in its config metadata (non-architecture), and keeps tokenizer files in ``hf_files/``,
so HF→native→HF reproduces the directory. Every check that needs no tensor data runs before the
output is created; later refusals (nonfinite weights, unreadable data) remove the partial output.
Either way nothing appears at the destination unless the conversion is complete.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from converters.errors import ConversionError

from .hf_reader import CONFIG_FILE, is_hf_checkpoint, open_hf_checkpoint
from .hf_writer import parse_size, write_hf_checkpoint
from .native_format import is_native_checkpoint
from .native_writer import write_checkpoint
from .dtypes import parse_dtype
from .plan import HF_FILES_DIR, hf_export, hf_import
from .prefetch import prefetch
from .source_dir import SourceDir


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


def detect_format(path: str | os.PathLike, *, follow_symlinks: bool = False) -> str:
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise ConversionError(f"{path}: not a directory (expected an HF or native checkpoint directory)")
    with SourceDir(path, follow_symlinks=follow_symlinks, error=ConversionError) as source:
        # a FIFO or a link leading outside is refused here, never opened; invalid JSON is named
        config = source.read_json(CONFIG_FILE) if source.kind(CONFIG_FILE) == "file" else None
    if isinstance(config, dict) and "model_type" in config:
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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _location(path: Path) -> list[Path]:
    """``path`` resolved and every folder above it: where it physically is."""
    real = Path(os.path.realpath(path))
    return [real, *real.parents]


def _check_paths(src: Path, dst: Path, overwrite: bool, force_overwrite: bool = False) -> None:
    """Refuse a destination that would destroy the input or something that is not ours to replace.

    Input and output are compared by file identity (``st_dev``, ``st_ino``), never by path: the
    same folder reached through a bind mount, another spelling or a case-insensitive file system
    is the same folder. ``--overwrite`` replaces a directory only when it is recognisably a
    checkpoint (HF or native) or empty, unless ``--force-overwrite``."""
    if dst.name in ("", ".", ".."):
        raise ConversionError(f"{dst}: not a usable destination: name the folder to create or replace "
                              "(e.g. ../converted)")
    src_id = _identity(src)
    for folder in _location(dst):
        if _identity(folder) == src_id:
            raise ConversionError(f"{dst}: the output must not be inside the input {src}"
                                  + (" (it is the input itself)" if folder == _location(dst)[0] else ""))
    dst_id = _identity(dst)
    if dst_id is not None and any(_identity(folder) == dst_id for folder in _location(src)):
        raise ConversionError(f"{dst}: the output must not contain the input {src} (replacing it would delete the input)")
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite and not force_overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")
    if not dst.is_dir():
        raise ConversionError(f"{dst}: exists and is not a directory; refusing to replace it")
    if os.path.ismount(dst):
        raise ConversionError(f"{dst}: is a mount point, which cannot be replaced; write to a folder inside it")
    if force_overwrite:
        return
    try:
        empty = not os.listdir(dst)
    except OSError as exc:
        raise ConversionError(f"{dst}: cannot be read ({exc.strerror or exc}); refusing to replace it") from None
    if not (empty or is_hf_checkpoint(dst) or is_native_checkpoint(dst)):
        raise ConversionError(f"{dst}: holds no HF or native checkpoint; --overwrite only replaces a checkpoint or an "
                              "empty folder (pass --force-overwrite to replace it anyway)")


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None, dtype: str = "keep",
            max_shard_size: str | int = "5GB", overwrite: bool = False, model_type: str | None = None,
            progress: Callable[[str, int], None] | None = None, weight_dtype: str | None = None,
            requantize: bool = False, allow_nonfinite: bool = False, pipeline_stages: int = 1,
            follow_symlinks: bool = False, force_overwrite: bool = False) -> Summary:
    """Convert the checkpoint at ``src`` into the other format at ``dst`` (atomically, streaming).

    ``dtype`` (keep, bf16, fp16, fp32, fp64) casts floating tensors; ``weight_dtype`` and
    ``requantize`` concern FP8 checkpoints (see :func:`checkpoints.plan.hf_export` and
    :func:`~checkpoints.plan.hf_import`); nonfinite weights are refused unless
    ``allow_nonfinite``; ``pipeline_stages`` splits a native output into stage folders.
    ``progress(name, nbytes)`` is called per tensor written; if it has a ``start(tensors, nbytes)``
    attribute, that is called first with the totals.

    ``src`` is untrusted input (:class:`checkpoints.source_dir.SourceDir`): a symbolic link leading
    outside it, a storage record or index entry naming a file elsewhere, or a special file is
    refused unless ``follow_symlinks``; every file is opened once, so a checkpoint replaced while
    it is read is read wholly as the version opened. ``overwrite`` replaces an existing ``dst``
    only when it is a checkpoint or empty; ``force_overwrite`` replaces any directory.
    """
    src, dst = Path(src), Path(dst)
    parse_dtype(dtype)
    parse_dtype(weight_dtype, "--weight-dtype", allow_keep=False)
    source_format = detect_format(src, follow_symlinks=follow_symlinks)
    target = to or ("native" if source_format == "hf" else "hf")
    if target not in ("hf", "native"):
        raise ConversionError(f"--to={target!r} must be 'hf' or 'native'")
    if target == source_format:
        raise ConversionError(f"{src} is already a {source_format} checkpoint (--to {target})")
    _check_paths(src, dst, overwrite, force_overwrite)
    overwrite = overwrite or force_overwrite
    max_bytes = parse_size(max_shard_size)
    if (not isinstance(pipeline_stages, int) or isinstance(pipeline_stages, bool) or pipeline_stages < 1):
        raise ConversionError(f"--pipeline-stages={pipeline_stages!r} must be a positive integer")
    if target == "hf" and pipeline_stages != 1:
        raise ConversionError("--pipeline-stages applies to a native output only")
    if target == "native" and requantize:
        raise ConversionError("--requantize applies to a native -> HF conversion (FP8 is dequantized on import)")
    counter = _Counter(progress)
    start = time.perf_counter()
    threads, interval, collecting = torch.get_num_threads(), sys.getswitchinterval(), gc.isenabled()
    torch.set_num_threads(1)  # see _process_settings_note
    sys.setswitchinterval(min(interval, 0.0005))
    gc.disable()
    try:
        if source_format == "hf":
            model_type = _hf_to_native(src, dst, dtype, weight_dtype, allow_nonfinite, pipeline_stages, overwrite,
                                       counter, follow_symlinks)
        else:
            model_type = _native_to_hf(src, dst, dtype, weight_dtype, requantize, allow_nonfinite, max_bytes,
                                       overwrite, counter, model_type, follow_symlinks)
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()
    direction = f"{source_format} -> {target}"
    return Summary(direction, model_type, counter.tensors, counter.nbytes, time.perf_counter() - start, dst)


_process_settings_note = """What convert() changes while it runs (and restores):

- torch runs one intra-op thread. Its kernels here (copies, cat, casts, min/max) are memory-bound
  and gain nothing from more threads, while OpenMP's barriers on a machine whose cores are busy
  cost several times the work itself. The parallelism that pays is overlapping the computing of tensors (a producer
  thread, :func:`checkpoints.prefetch.prefetch`) with writing them.
- The GIL switch interval drops (from Python's default 5 ms), so the writing thread gets the GIL
  back soon after each ``write(2)`` instead of waiting a whole interval for the producer.
- The cyclic garbage collector is off: the conversion makes no cycles worth collecting, and full
  collections walk every object torch and transformers loaded."""


PREFETCH_DEPTH = 2
"""Tensors the producer may compute ahead of the writer. With 1 it stalled on every rule that
yields several tensors at once (the qkv split, gate/up) or costs more than the tensor before it
takes to write; with 2 the writer rarely waits. Memory: one more tensor in flight, mostly
memory-mapped source bytes (see ``parts=True`` in ``checkpoints.plan``)."""


class _Counter:
    def __init__(self, progress):
        self.progress, self.tensors, self.nbytes = progress, 0, 0

    def start(self, tensors: int, nbytes: int) -> None:
        start = getattr(self.progress, "start", None)
        if callable(start):
            start(tensors, nbytes)

    def __call__(self, name: str, nbytes: int) -> None:
        self.tensors += 1
        self.nbytes += nbytes
        if self.progress is not None:
            self.progress(name, nbytes)

    def wrap(self, stream):
        for name, tensor in stream:
            nbytes = tensor.numel() * tensor.element_size()
            yield name, tensor
            del tensor
            self(name, nbytes)  # counted once written (the writer pulls the next one after writing)


def _hf_to_native(src: Path, dst: Path, dtype: str, weight_dtype: str | None, allow_nonfinite: bool,
                  pipeline_stages: int, overwrite: bool, counter: _Counter, follow_symlinks: bool) -> str:
    with open_hf_checkpoint(src, follow_symlinks=follow_symlinks) as reader:
        plan = hf_import(reader, dtype=dtype, weight_dtype=weight_dtype, allow_nonfinite=allow_nonfinite,
                         pipeline_stages=pipeline_stages)
        if pipeline_stages > plan.cfg.num_layers:
            raise ConversionError(f"--pipeline-stages={pipeline_stages} exceeds the model's {plan.cfg.num_layers} layers")
        counter.start(len(plan.dtypes), plan.nbytes)
        with closing(prefetch(plan.tensors(parts=True), depth=PREFETCH_DEPTH)) as tensors:
            write_checkpoint(dst, plan.cfg, counter.wrap(tensors), plan.dtypes, pipeline_stages,
                             overwrite=overwrite,
                             extra_files={f"{HF_FILES_DIR}/{name}": file for name, file in reader.extra_files.items()})
    return plan.converter.model_type


def _native_to_hf(src: Path, dst: Path, dtype: str, weight_dtype: str | None, requantize: bool,
                  allow_nonfinite: bool, max_bytes: int, overwrite: bool, counter: _Counter,
                  model_type: str | None, follow_symlinks: bool) -> str:
    export = hf_export(src, dtype=dtype, weight_dtype=weight_dtype, requantize=requantize,
                       allow_nonfinite=allow_nonfinite, model_type=model_type, follow_symlinks=follow_symlinks)
    with export.reader, closing(prefetch(export.tensors(parts=True), depth=PREFETCH_DEPTH)) as tensors:
        counter.start(len(export.plan), export.nbytes)
        write_hf_checkpoint(dst, export.config, tensors, max_shard_size=max_bytes,
                            generation_config=export.generation_config, copy_files_from=export.hf_files,
                            overwrite=overwrite, progress=counter, plan=export.plan)
    return export.converter.model_type
