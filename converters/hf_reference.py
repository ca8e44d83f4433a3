"""transformers as the reference: its config object for an HF dict, and its logging, silenced or
captured (building configs and models as references must not print their warnings, and the checks
that are about those warnings must see them)."""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars (restored on exit)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def captured_warnings():
    """Collect python warnings and transformers log records of level WARNING and above."""
    from transformers.utils import logging as hf_logging

    handler = _ListHandler()
    logger = hf_logging.get_logger("transformers")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    logger.addHandler(handler)
    messages = handler.messages
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(level)


def hf_config(hf: Mapping[str, Any]):
    """transformers' config object for an HF config dict (``AutoConfig.for_model``)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**copy.deepcopy(dict(hf)))


class _Float32AsFloat64(TorchFunctionMode):
    """Every conversion to float32 (``.float()``, ``.to(torch.float32)``, ``dtype=torch.float32``)
    gives float64 instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float:
            return args[0].to(torch.float64)
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return func(*args, **kwargs)


@contextlib.contextmanager
def exact_float64():
    """transformers computing in float64 the steps a float64 model otherwise rounds to float32
    (rotary tables, RMSNorm upcasts, Gemma's float32 norms, eager softmax): build *and* run the
    model inside it. What a float64 model's logits differ from this by is HF's own float64 error,
    which in a tiny, ill-conditioned model can exceed the static float64 bound."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with _Float32AsFloat64():
            yield
    finally:
        torch.set_default_dtype(default)
