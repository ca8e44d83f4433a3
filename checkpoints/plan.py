"""Conversion plans: a checkpoint on disk streamed as the other format's tensors, one at a time.

(Named ``plan`` rather than ``streaming``: ``converters.weights.stream`` is the rule driver these
plans run, and "stream" would otherwise name both.)

The two directions as reusable plans, both built before any tensor is read (so every refusal
that needs no data comes first, and writers can lay out their files up front):

- :func:`hf_export` / :func:`stream_hf_weights`: a native checkpoint as HF ``(name, tensor)``
  pairs, never touching the disk beyond reading the source: the online path for pushing weights
  into an inference engine (RL), and what the HF writer of ``convcheck convert`` consumes.
- :func:`hf_import`: an HF checkpoint as native ``(name, tensor)`` pairs, with the native config
  and the dtype of every tensor, for :func:`checkpoints.native_writer.write_checkpoint`.

Along the way: the dtype policy (``--dtype``, ``--weight-dtype``), FP8 block-scaled weights
(:mod:`checkpoints.fp8`), and the nonfinite check (:mod:`checkpoints.nonfinite`), all applied one tensor
at a time. Peak memory is one weight rule's inputs and outputs (about one layer's largest
matrices), whatever the model size.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import native
from converters import registry
from converters.base import Converter
from converters.config_values import check_config_values
from converters.errors import ConversionError
from converters.weights import convert_stream, export_shapes

from . import fp8
from .dtypes import dtype_name, parse_dtype
from .hf_reader import tokenizer_names
from .native_format import Concatenation, stage_index
from .native_reader import NativeCheckpointReader, open_checkpoint
from .nonfinite import CheckedSource, NonfiniteCheck
from .origins import FileOrigins
from .source import FileNamed, TensorSource

MODEL_TYPE_KEY = "hf_model_type"  # native metadata: the HF model_type this checkpoint came from
GENERATION_KEY = "hf_generation_config"  # native metadata: the HF generation_config.json
HF_FILES_DIR = "hf_files"  # native checkpoint folder keeping tokenizer files for the way back

Entry = tuple[str, torch.dtype, tuple[int, ...]]


# ------------------------------------------------------------------------------- planning
class _MetaCat(TorchFunctionMode):
    """``torch.cat`` of ``meta`` tensors answered from the shapes alone.

    Plans run every weight rule on ``meta`` tensors. torch's meta ``cat`` is a Python
    decomposition whose first call imports ``torch._dynamo``, which takes longer than the whole
    rest of planning a 70B model. Anything unusual (mismatched shapes, other devices) goes to the
    real ``cat``, which raises as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.cat, torch.concat) and args and isinstance(args[0], (list, tuple)) and args[0]:
            tensors = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            ref = tensors[0]
            if (isinstance(dim, int) and set(kwargs) <= {"dim"} and ref.dim() > 0
                    and all(isinstance(t, torch.Tensor) and t.device.type == "meta" and t.dim() == ref.dim()
                            for t in tensors)):
                d = dim % ref.dim()
                if all(t.shape[:d] == ref.shape[:d] and t.shape[d + 1:] == ref.shape[d + 1:] for t in tensors):
                    shape = list(ref.shape)
                    shape[d] = sum(t.shape[d] for t in tensors)
                    dtype = ref.dtype
                    for t in tensors[1:]:
                        dtype = torch.promote_types(dtype, t.dtype)
                    return torch.empty(shape, dtype=dtype, device="meta")
        return func(*args, **kwargs)


def plan_outputs(rules, source: Mapping, direction: str) -> list[Entry]:
    """``(name, dtype, shape)`` of every tensor the rules produce, in stream order, by running each
    rule on ``meta`` tensors of the source's shapes and dtypes (no data read)."""
    out: list[Entry] = []
    with _MetaCat():
        for rule in rules:
            tensors = [torch.empty(tuple(source.shape_of(n)), dtype=source.dtype_of(n), device="meta")
                       for n in rule.sources(direction)]
            for name, t in zip(rule.targets(direction), rule.run(direction, tensors)):
                out.append((name, t.dtype, tuple(t.shape)))
    return out


def _narrowing(source: torch.dtype, target: torch.dtype) -> bool:
    return (source.is_floating_point and target.is_floating_point
            and torch.finfo(target).max < torch.finfo(source).max)


def _cast(name: str, tensor: torch.Tensor | Concatenation, target: torch.dtype,
          check: NonfiniteCheck) -> torch.Tensor | Concatenation:
    if tensor.dtype == target:
        return tensor
    if isinstance(tensor, Concatenation):
        tensor = tensor.materialize()
    out = tensor.to(target)
    if _narrowing(tensor.dtype, target):
        check.check_cast(name, tensor, out)
    return out


def dominant(entries: Iterable[Entry], default: torch.dtype) -> torch.dtype:
    """The floating dtype holding the most bytes (config.json's ``dtype`` under ``--dtype keep``)."""
    total: dict[torch.dtype, int] = {}
    for _, dtype, shape in entries:
        if dtype.is_floating_point and not fp8._is_fp8(dtype):
            total[dtype] = total.get(dtype, 0) + math.prod(shape) * dtype.itemsize
    return max(total, key=lambda d: (total[d], str(d))) if total else default


# --------------------------------------------------------------------------------- export
@dataclass
class HFExport:
    """A native checkpoint, planned as an HF checkpoint. :meth:`tensors` streams the weights (call
    it again for another pass); ``plan`` lists ``(name, dtype, shape)`` in stream order."""

    converter: Converter
    cfg: native.ModelConfig
    reader: NativeCheckpointReader
    config: dict
    generation_config: dict | None
    plan: list[Entry]
    hf_files: dict[str, str]  # tokenizer files kept in the checkpoint: name -> the reader's held file
    targets: dict[str, torch.dtype]
    quantized: frozenset[str]
    scheme: fp8.Scheme | None
    requantize: bool
    allow_nonfinite: bool

    @property
    def nbytes(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in self.plan)

    def tensors(self, parts: bool = False) -> Iterator[tuple[str, torch.Tensor | Concatenation]]:
        """The HF tensors in stream order. ``parts=True`` (for the HF writer): as
        :meth:`HFImport.tensors` — views uncloned, bytes kept as they are in a native data file
        as file slices (:class:`checkpoints.native_format.Concatenation`)."""
        check = NonfiniteCheck(self.allow_nonfinite)
        origins = FileOrigins() if parts else None
        rules = self.converter.weight_rules(self.cfg)
        stream = convert_stream(rules, CheckedSource(self.reader, check, origins), "export",
                                native.state_shapes(self.cfg), copy=False,
                                blocks=origins.concatenation if parts else None)
        return self._tensors(stream, check)

    def _tensors(self, stream, check: NonfiniteCheck) -> Iterator[tuple[str, torch.Tensor | Concatenation]]:
        for name, tensor in stream:
            if self.requantize and name in self.quantized:
                if isinstance(tensor, Concatenation):
                    tensor = tensor.materialize()
                q, scale = fp8.quantize(tensor, self.scheme.block)
                del tensor
                yield name, q
                del q
                yield fp8.scale_name(name), scale
                continue
            tensor = _cast(name, tensor, self.targets[name], check)
            yield name, tensor
            del tensor
        check.finish()


def hf_export(native_ckpt: str | os.PathLike | NativeCheckpointReader, *, dtype: str = "keep",
              weight_dtype: str | None = None, requantize: bool = False, allow_nonfinite: bool = False,
              model_type: str | None = None, follow_symlinks: bool = False) -> HFExport:
    """Plan the HF form of a native checkpoint (a path or an open reader). Reads metadata only.

    ``dtype`` casts floating tensors (``keep``: as stored). For a checkpoint imported from FP8
    (its metadata records the quantized weights), ``weight_dtype`` gives those weights their own
    dtype, and ``requantize=True`` writes them as FP8 blocks with ``_scale_inv`` companions and
    restores ``quantization_config``. ``model_type`` is needed only when the checkpoint does not
    record one. ``follow_symlinks`` reads links leading outside the checkpoint (refused by
    default: :class:`checkpoints.source_dir.SourceDir`). Raises :class:`ConversionError` for everything
    checkable without data."""
    cast_to = parse_dtype(dtype)
    weight_to = parse_dtype(weight_dtype, "--weight-dtype", allow_keep=False)
    reader = (native_ckpt if isinstance(native_ckpt, NativeCheckpointReader)
              else open_checkpoint(native_ckpt, follow_symlinks=follow_symlinks))
    cfg = reader.config
    metadata = dict(cfg.metadata)
    recorded = metadata.pop(MODEL_TYPE_KEY, None)
    generation = metadata.pop(GENERATION_KEY, None)
    quant_record = metadata.pop(fp8.METADATA_KEY, None)
    model_type = model_type or recorded
    if model_type is None:
        raise ConversionError(f"{reader.path}: the native checkpoint does not record an HF model_type; pass "
                              f"--model-type (one of {', '.join(registry.names())})")
    converter = registry.get(model_type)
    cfg = dataclasses.replace(cfg, metadata=metadata)
    config = converter.export_config(cfg)
    rules = converter.weight_rules(cfg)
    convert_stream(rules, reader, "export", native.state_shapes(cfg))  # names and shapes, up front
    outputs = plan_outputs(rules, reader, "export")
    scheme, quantized = None, set()
    if quant_record is not None:
        scheme, record = fp8.read_record(quant_record)
        quantized = fp8.expand_names(record, [name for name, _, _ in outputs])
    if requantize and weight_to is not None:
        raise ConversionError("--requantize and --weight-dtype exclude each other (FP8 weights, or plain weights "
                              "in that dtype)")
    if (requantize or weight_to is not None) and not quantized:
        option = "--requantize" if requantize else "--weight-dtype"
        raise ConversionError(f"{option}: {reader.path} records no FP8-quantized weights (native metadata "
                              f"{fp8.METADATA_KEY}); use --dtype")
    targets: dict[str, torch.dtype] = {}
    plan: list[Entry] = []
    for name, source_dtype, shape in outputs:
        if not source_dtype.is_floating_point:
            target = source_dtype
        elif name in quantized and weight_to is not None:
            target = weight_to
        else:
            target = cast_to or source_dtype
        targets[name] = target
        if requantize and name in quantized:
            plan.append((name, fp8.FP8_DTYPE, shape))
            plan.append((fp8.scale_name(name), fp8.SCALE_DTYPE, fp8.scale_shape(shape, scheme.block)))
        else:
            plan.append((name, target, shape))
    plain = [(n, targets[n], s) for n, _, s in outputs if not (requantize and n in quantized)]
    config["dtype"] = dtype_name(dominant(plain or [(n, targets[n], s) for n, _, s in outputs], torch.bfloat16))
    if requantize:
        config[fp8.QUANT_KEY] = scheme.config
    hf_files = {}
    if reader.source.kind(HF_FILES_DIR) == "dir":
        hf_files = {name: reader.source.proc_path(f"{HF_FILES_DIR}/{name}")
                    for name in tokenizer_names(reader.source, HF_FILES_DIR)}
    return HFExport(converter, cfg, reader, dict(sorted(config.items())), generation, plan,
                    hf_files, targets, frozenset(quantized), scheme, requantize, allow_nonfinite)


def stream_hf_weights(native_ckpt: str | os.PathLike | NativeCheckpointReader, *, dtype: str = "keep",
                      weight_dtype: str | None = None, requantize: bool = False, allow_nonfinite: bool = False,
                      model_type: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield a native checkpoint's weights as HF ``(name, tensor)`` pairs, one rule at a time,
    without writing anything: for pushing weights into an inference engine (e.g. during RL).

    Options as :func:`hf_export` (and ``convcheck convert``, whose HF writer consumes this same
    stream). Everything checkable without data is checked by this call, before the first tensor.
    Nonfinite weights are refused with :class:`ConversionError` once the stream has been run to
    its end (all offenders listed): a consumer must treat what it received as void then, as the
    disk writer does. Each tensor is the caller's (a fresh tensor, or a private copy-on-write
    map of the source file)."""
    return hf_export(native_ckpt, dtype=dtype, weight_dtype=weight_dtype, requantize=requantize,
                     allow_nonfinite=allow_nonfinite, model_type=model_type).tensors()


# --------------------------------------------------------------------------------- import
def check_hf_config(config: Mapping[str, Any]) -> None:
    """Contradictions every decoder config shares, named by their HF keys (before any converter
    reads the dict): the values themselves (:func:`converters.config_values.check_config_values`:
    types, finite, bounded), ``num_key_value_heads`` must divide ``num_attention_heads``, and
    without ``head_dim`` the heads must divide ``hidden_size``."""
    check_config_values(config)
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    hidden = config.get("hidden_size")
    if heads and kv and heads % kv:
        raise ConversionError(f"config.json: num_key_value_heads={kv} does not divide num_attention_heads={heads}")
    if heads and hidden and config.get("head_dim") is None and hidden % heads:
        raise ConversionError(f"config.json: hidden_size={hidden} is not divisible by num_attention_heads={heads} "
                              "(and no head_dim is given)")


def import_hf_config(converter: Converter, config: Mapping[str, Any]) -> native.ModelConfig:
    """``converter.import_config`` with any unexpected failure turned into a one-line refusal."""
    try:
        return converter.import_config(config)
    except ConversionError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, ZeroDivisionError) as exc:
        raise ConversionError(f"config.json: cannot be read as {converter.model_type} "
                              f"({type(exc).__name__}: {exc})") from None


def _in_file(reader: TensorSource, message: str) -> str:
    """Prefix a refusal that starts with a tensor name by the file holding that tensor."""
    name = message.split(":", 1)[0]
    if isinstance(reader, FileNamed) and name in reader:
        return f"{reader.path / reader.file_of(name)}: {message}"
    return message


@dataclass
class HFImport:
    """An HF checkpoint, planned as a native one: ``cfg`` (with metadata for the way back),
    ``dtypes`` (every native tensor's dtype, in stream order) and :meth:`tensors`."""

    converter: Converter
    cfg: native.ModelConfig
    source: Mapping
    rules: list
    dtypes: dict[str, torch.dtype]
    cast_to: torch.dtype | None
    allow_nonfinite: bool
    shapes: dict[str, tuple[int, ...]]

    @property
    def nbytes(self) -> int:
        shapes = native.state_shapes(self.cfg)
        return sum(math.prod(shapes[n]) * d.itemsize for n, d in self.dtypes.items())

    def tensors(self, parts: bool = False) -> Iterator[tuple[str, torch.Tensor | Concatenation]]:
        """The native tensors in stream order. ``parts=True`` (for the native writer): a tensor
        that only concatenates source tensors (``fc1 = [gate; up]``, a grouped ``qkv``, stacked
        experts) comes as a :class:`checkpoints.native_format.Concatenation` of them, unassembled; views
        are not cloned; bytes kept as they are in a source file come as file slices, which the
        writer has the kernel copy (renames, those blocks)."""
        check = NonfiniteCheck(self.allow_nonfinite)
        origins = FileOrigins() if parts else None
        stream = convert_stream(self.rules, CheckedSource(self.source, check, origins), "import", self.shapes,
                                copy=False, blocks=origins.concatenation if parts else None)
        return self._tensors(stream, check)

    def _tensors(self, stream, check) -> Iterator[tuple[str, torch.Tensor | Concatenation]]:
        for name, tensor in stream:
            tensor = _cast(name, tensor, self.dtypes[name], check)
            yield name, tensor
            del tensor
        check.finish()


def hf_import(reader, *, dtype: str = "keep", weight_dtype: str | None = None, allow_nonfinite: bool = False,
              pipeline_stages: int = 1) -> HFImport:
    """Plan the native form of an open HF checkpoint (``checkpoints.hf_reader``). Reads headers
    only. ``quantization_config`` is handled here, not by the converters: FP8 weights are
    dequantized to ``weight_dtype`` (else ``dtype``, else the checkpoint's dominant floating
    dtype) and what was quantized is recorded in the native metadata (:mod:`checkpoints.fp8`).
    With ``pipeline_stages > 1`` the rules run stage by stage (the order the native writer needs)."""
    cast_to = parse_dtype(dtype)
    weight_to = parse_dtype(weight_dtype, "--weight-dtype", allow_keep=False)
    config = dict(reader.config)
    scheme = fp8.inspect(reader, config)
    config.pop(fp8.QUANT_KEY, None)
    check_hf_config(config)
    converter = registry.detect(config)
    cfg = converter.fit_checkpoint(import_hf_config(converter, config), reader.keys())
    metadata = {**cfg.metadata, MODEL_TYPE_KEY: converter.model_type}
    if reader.generation_config is not None:
        metadata[GENERATION_KEY] = reader.generation_config
    source: Mapping = reader
    if scheme is not None:
        plain = [n for n in reader.keys() if not fp8._is_fp8(reader.dtype_of(n)) and not n.endswith(fp8.SCALE_SUFFIX)]
        source = fp8.DequantizedSource(reader, scheme, weight_to or cast_to or fp8.dominant_dtype(reader, plain))
        metadata[fp8.METADATA_KEY] = fp8.metadata_record(scheme, source.quantized, list(source))
    elif weight_to is not None:
        raise ConversionError(f"--weight-dtype: {reader.path} has no FP8 weights; use --dtype")
    cfg = dataclasses.replace(cfg, metadata=metadata)
    rules = converter.weight_rules(cfg)
    if pipeline_stages > 1:
        stage = stage_index(cfg, pipeline_stages)
        rules = sorted(rules, key=lambda rule: min((stage(n) for n in rule.targets("import")), default=0))
    with _MetaCat():
        shapes = export_shapes(rules, native.state_shapes(cfg))
    try:
        convert_stream(rules, source, "import", shapes)  # missing, extra and misshapen tensors, up front
    except ConversionError as exc:
        raise ConversionError(_in_file(reader, str(exc))) from None
    dtypes = {}
    for name, source_dtype, _ in plan_outputs(rules, source, "import"):
        dtypes[name] = cast_to if cast_to is not None and source_dtype.is_floating_point else source_dtype
    return HFImport(converter, cfg, source, rules, dtypes, cast_to, allow_nonfinite, shapes)
