"""The dtype options of ``convcheck convert`` (``--dtype``, ``--weight-dtype``) and the dtype names
config.json uses."""
from __future__ import annotations

import torch

from converters.errors import ConversionError

DTYPES: dict[str, torch.dtype | None] = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16,
                                         "fp32": torch.float32, "fp64": torch.float64}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


def parse_dtype(value: str | None, option: str = "--dtype", allow_keep: bool = True) -> torch.dtype | None:
    choices = [k for k in DTYPES if allow_keep or k != "keep"]
    if value is None or (allow_keep and value == "keep"):
        return None
    if value not in choices:
        raise ConversionError(f"{option}={value!r} must be one of {', '.join(choices)}")
    return DTYPES[value]


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))

