"""FP8 block-scaled checkpoints, as DeepSeek-V3 and other FP8 releases ship them.

On disk, a quantized weight ``W`` (2-D, ``float8_e4m3fn``) has a companion ``W_scale_inv``
(float32) holding one multiplier per ``weight_block_size`` block (128 x 128 in practice): block
``(i, j)`` of the real weight is ``W[block].float() * W_scale_inv[i, j]``. The scale has shape
``(ceil(rows / b0), ceil(cols / b1))``; edge blocks are partial. ``config.json`` says so:

    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128]}

The converters' declarations know nothing of this: it is a storage encoding, not architecture.
The pipeline handles it around them (this module):

- import: :func:`inspect` checks the weights against the config (every float8 weight has a scale
  of the right shape, every scale a float8 weight) and takes ``quantization_config`` out of the
  config before ``import_config`` sees it; :class:`DequantizedSource` presents the checkpoint with
  weights dequantized and scales hidden, so the weight rules see a plain checkpoint. What was
  quantized is recorded in the native config's metadata under :data:`METADATA_KEY` (the
  ``quantization_config`` and the quantized HF names, compacted by :func:`compact_names`).
- export: plain weights by default; :func:`quantize` re-creates the blocks and scales for every
  recorded name when asked to (``--requantize``), recomputing each scale as block amax / 448 (the
  usual recipe).

How exact ``--requantize`` is, precisely:

- dequantized in float32 or wider, from scales the recipe made (``s = fl(amax / 448)``, so each
  block's largest code is ±448): codes **and** scales come back bit-exact. The requantization's
  amax is ``fl(448 s)`` and its scale ``fl(fl(448 s) / 448)``, which restores every such ``s``
  (checked for every float32 significand of ``amax``; for an arbitrary float32 scale it fails
  about 11% of the time), and each code ``q`` comes back from ``fl(fl(q s) / s)``, within 2^-23 of it.
- dequantized in bfloat16 (the default for a bf16 checkpoint) or float16: the codes come back
  bit-exact (4 significant bits fit), the scales do not: the native weights keep 8 (11) of the
  scale's 24 significand bits, so the recomputed scales differ by up to 2^-8 relative (measured
  2.7e-3..3.5e-3 on random blocks, every block affected).
- scales the recipe did not make (a block whose largest code is below 448, e.g. power-of-two
  scales): recomputed, so scale and codes both change.

Exact scales in those cases would need the original scale tensors themselves: the native
checkpoint holds the model's tensors only (``native.state_shapes``), and its JSON metadata is no
place for one float per block of a large model (~42M for DeepSeek-V3).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from converters.errors import ConversionError

from .source import FileNamed, Located, TensorSource

QUANT_KEY = "quantization_config"
METADATA_KEY = "hf_quantization"  # native metadata: {"quantization_config": ..., "quantized": {...}}
SCALE_SUFFIX = "_scale_inv"
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALE_DTYPE = torch.float32
MAX_BLOCK = 2**20  # a block side; scales are expanded to it, so it is bounded before anything is allocated


@dataclass(frozen=True)
class Scheme:
    """A validated ``quantization_config`` (kept verbatim for the way back)."""

    block: tuple[int, int]
    config: dict

    @classmethod
    def from_config(cls, qc: Any, where: str = "config.json") -> "Scheme":
        if not isinstance(qc, dict):
            raise ConversionError(f"{where}: {QUANT_KEY} must be an object, got {type(qc).__name__}")
        method = qc.get("quant_method")
        if method != "fp8":
            raise ConversionError(f"{where}: {QUANT_KEY}.quant_method={method!r} is not supported "
                                  "(only block-scaled 'fp8')")
        fmt = qc.get("fmt", "e4m3")
        if fmt != "e4m3":
            raise ConversionError(f"{where}: {QUANT_KEY}.fmt={fmt!r} is not supported (only 'e4m3')")
        block = qc.get("weight_block_size")
        if (not isinstance(block, (list, tuple)) or len(block) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) and 0 < b <= MAX_BLOCK for b in block)):
            raise ConversionError(f"{where}: {QUANT_KEY}.weight_block_size={block!r} must be two positive "
                                  f"integers of at most {MAX_BLOCK} (per-tensor or per-channel FP8 is not supported)")
        return cls((block[0], block[1]), dict(qc))


def scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
    return (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))


def scale_name(weight: str) -> str:
    return weight + SCALE_SUFFIX


# ------------------------------------------------------------------------------ the maths
def dequantize(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """``weight * scale`` block by block (in float32), as ``dtype``. One row-block at a time."""
    rows, cols = weight.shape
    out = torch.empty((rows, cols), dtype=dtype)
    for i in range(0, rows, block[0]):
        part = weight[i:i + block[0]].to(torch.float32, copy=True)  # never the caller's tensor
        part.mul_(scale[i // block[0]].to(torch.float32).repeat_interleave(block[1])[:cols])
        out[i:i + block[0]] = part
    return out


def quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block scales ``amax / 448`` (1 for an all-zero block) and ``weight / scale`` in float8."""
    rows, cols = weight.shape
    n_rows, n_cols = scale_shape((rows, cols), block)
    q = torch.empty((rows, cols), dtype=FP8_DTYPE)
    scales = torch.empty((n_rows, n_cols), dtype=SCALE_DTYPE)
    pad = n_cols * block[1] - cols
    for k, i in enumerate(range(0, rows, block[0])):
        part = weight[i:i + block[0]].to(torch.float32, copy=True)  # never the caller's tensor
        magnitude = torch.nn.functional.pad(part.abs(), (0, pad)) if pad else part.abs()
        amax = magnitude.view(part.shape[0], n_cols, block[1]).amax(dim=(0, 2))
        scale = amax / FP8_MAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        scales[k] = scale
        part.div_(scale.repeat_interleave(block[1])[:cols]).clamp_(-FP8_MAX, FP8_MAX)
        q[i:i + block[0]] = part.to(FP8_DTYPE)
    return q, scales


# ------------------------------------------------------------------------------- import
def _is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2) or "float8" in str(dtype)


def inspect(reader: TensorSource, config: dict) -> Scheme | None:
    """Check an HF checkpoint's FP8 weights and scales against its ``quantization_config``.

    Returns the scheme (None for an unquantized checkpoint). Refuses, naming the tensor: a float8
    weight without its scale, a scale of the wrong shape or dtype, a scale whose weight is missing
    or not float8, float8 weights without a ``quantization_config`` and the reverse. Reads headers
    only."""
    qc = config.get(QUANT_KEY)
    scheme = Scheme.from_config(qc) if qc is not None else None
    names = list(reader.keys())
    fp8 = [n for n in names if _is_fp8(reader.dtype_of(n))]
    scales = [n for n in names if n.endswith(SCALE_SUFFIX)]
    if scheme is None and not fp8 and not scales:
        return None
    def file(name: str) -> str:
        return f"{reader.file_of(name)}: " if isinstance(reader, FileNamed) else ""

    if scheme is None:
        name = (fp8 or scales)[0]
        raise ConversionError(f"{file(name)}tensor {name!r} is an FP8 weight or scale, but config.json has no "
                              f"{QUANT_KEY}")
    if not fp8:
        raise ConversionError(f"config.json: {QUANT_KEY} declares fp8 weights, but no tensor is float8")
    for name in scales:
        weight = name[:-len(SCALE_SUFFIX)]
        if weight not in reader:
            raise ConversionError(f"{file(name)}scale {name!r} belongs to weight {weight!r}, which does not exist")
        if not _is_fp8(reader.dtype_of(weight)):
            raise ConversionError(f"{file(name)}scale {name!r} belongs to weight {weight!r}, which is "
                                  f"{reader.dtype_of(weight)}, not float8")
    for name in fp8:
        shape = tuple(reader.shape_of(name))
        if reader.dtype_of(name) != FP8_DTYPE:
            raise ConversionError(f"{file(name)}tensor {name!r} is {reader.dtype_of(name)}; {QUANT_KEY}.fmt 'e4m3' "
                                  "needs float8_e4m3fn")
        if len(shape) != 2:
            raise ConversionError(f"{file(name)}FP8 tensor {name!r} has shape {shape}; block scaling needs a matrix")
        scale = scale_name(name)
        if scale not in reader:
            raise ConversionError(f"{file(name)}FP8 weight {name!r} has no scale {scale!r}")
        expected = scale_shape(shape, scheme.block)
        got = tuple(reader.shape_of(scale))
        if got != expected:
            raise ConversionError(f"{file(scale)}scale {scale!r} has shape {got}; weight {shape} in blocks of "
                                  f"{list(scheme.block)} needs {expected}")
        if not reader.dtype_of(scale).is_floating_point or _is_fp8(reader.dtype_of(scale)):
            raise ConversionError(f"{file(scale)}scale {scale!r} is {reader.dtype_of(scale)}; expected float32")
    return scheme


def dominant_dtype(reader, names: Iterable[str], default: torch.dtype = torch.bfloat16) -> torch.dtype:
    """The floating, non-FP8 dtype holding the most bytes among ``names`` (``default`` if none)."""
    total: dict[torch.dtype, int] = {}
    for name in names:
        dtype = reader.dtype_of(name)
        if dtype.is_floating_point and not _is_fp8(dtype):
            total[dtype] = total.get(dtype, 0) + math.prod(reader.shape_of(name)) * dtype.itemsize
    return max(total, key=lambda d: (total[d], str(d))) if total else default


class DequantizedSource(Mapping):
    """An HF reader seen with its FP8 weights dequantized to ``dtype`` and the scales hidden.

    ``shape_of``/``dtype_of`` answer without reading data; ``quantized`` lists the weights that
    were FP8 on disk."""

    def __init__(self, reader: TensorSource, scheme: Scheme, dtype: torch.dtype):
        self.reader, self.scheme, self.dtype = reader, scheme, dtype
        self.quantized = sorted(n for n in reader.keys() if _is_fp8(reader.dtype_of(n)))
        self._quantized = set(self.quantized)
        self._names = [n for n in reader.keys() if not (n.endswith(SCALE_SUFFIX) and n[:-len(SCALE_SUFFIX)] in self._quantized)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self.reader and not (isinstance(name, str) and name.endswith(SCALE_SUFFIX)
                                            and name[:-len(SCALE_SUFFIX)] in self._quantized)

    def shape_of(self, name: str) -> torch.Size:
        return self.reader.shape_of(name)

    def dtype_of(self, name: str) -> torch.dtype:
        return self.dtype if name in self._quantized else self.reader.dtype_of(name)

    def file_of(self, name: str) -> str:
        return self.reader.file_of(name)

    def extent_of(self, name: str):
        """Where a weight kept as it is lies on disk (the reader's answer); None for a dequantized one."""
        return None if name in self._quantized or not isinstance(self.reader, Located) else self.reader.extent_of(name)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self:
            raise KeyError(name)
        if name not in self._quantized:
            return self.reader[name]
        pair = self.reader.load_many([name, scale_name(name)])
        return dequantize(pair[name], pair[scale_name(name)], self.scheme.block, self.dtype)


# -------------------------------------------------------------------- remembering the names
_DIGITS = re.compile(r"[0-9]+")


def _generalise(name: str) -> str:
    return _DIGITS.sub("*", name)


def compact_names(quantized: Iterable[str], all_names: Iterable[str]) -> dict[str, list[str]]:
    """Describe the set ``quantized`` (a subset of ``all_names``) compactly and exactly: a pattern
    (every digit run replaced by ``*``) stands for all names it matches when all of them are
    quantized; other names are listed. ``{"patterns": [...], "names": [...]}``, sorted."""
    quantized = set(quantized)
    members: dict[str, set[str]] = {}
    for name in all_names:
        members.setdefault(_generalise(name), set()).add(name)
    patterns, names = set(), set()
    for name in quantized:
        pattern = _generalise(name)
        if members.get(pattern, {name}) <= quantized:
            patterns.add(pattern)
        else:
            names.add(name)
    return {"patterns": sorted(patterns), "names": sorted(names)}


def expand_names(record: Mapping[str, list[str]], produced: Iterable[str]) -> set[str]:
    """The names of ``produced`` that ``record`` (from :func:`compact_names`) says were quantized.
    Refuses a record naming a tensor, or a pattern matching none, that the export does not produce."""
    produced = list(produced)
    patterns, names = set(record.get("patterns", ())), set(record.get("names", ()))
    present = set(produced)
    missing = sorted(n for n in names if n not in present)
    generalised = {_generalise(n) for n in produced}
    missing += sorted(p for p in patterns if p not in generalised)
    if missing:
        raise ConversionError(f"native metadata {METADATA_KEY} records FP8 weight(s) {', '.join(missing[:3])} that "
                              "this export does not produce")
    return {n for n in produced if n in names or _generalise(n) in patterns}


def metadata_record(scheme: Scheme, quantized: Iterable[str], all_names: Iterable[str]) -> dict:
    return {"quantization_config": scheme.config, "quantized": compact_names(quantized, all_names)}


def read_record(record: Any) -> tuple[Scheme, Mapping[str, list[str]]]:
    where = f"native metadata {METADATA_KEY}"
    if not isinstance(record, dict) or not isinstance(record.get("quantized"), dict):
        raise ConversionError(f"{where}: expected {{'quantization_config': ..., 'quantized': {{...}}}}")
    return Scheme.from_config(record.get("quantization_config"), where), record["quantized"]
