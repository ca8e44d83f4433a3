"""Checkpoint I/O: reading and writing the two formats the converters translate between.

The converters (:mod:`converters`) are declarations over state dicts and config dicts; this package
is everything that touches files: the HF safetensors reader and writer (:mod:`.hf`), the native
DCP format, writer and reader (:mod:`.native_format`, :mod:`.native_writer`, :mod:`.native_reader`),
FP8 checkpoints (:mod:`.fp8`), the conversion plans that stream one into the other (:mod:`.plan`),
the pipeline and command line (:mod:`.pipeline`, :mod:`.cli`), and the generic file code they
share (atomic output, untrusted source directories, kernel page copies, DCP metadata unpickling).
It depends on :mod:`native` and :mod:`converters`; neither depends on it.

The native checkpoint API is re-exported here; the rest is imported from its module.
"""
from .native_format import CheckpointError, Concatenation, is_native_checkpoint
from .native_reader import NativeCheckpointReader, load_checkpoint, load_model, open_checkpoint
from .native_writer import save_checkpoint, write_checkpoint
from .source import TensorSource

__all__ = ["CheckpointError", "Concatenation", "NativeCheckpointReader", "TensorSource", "is_native_checkpoint",
           "load_checkpoint", "load_model", "open_checkpoint", "save_checkpoint", "write_checkpoint"]
