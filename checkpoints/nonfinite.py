"""NaN and Inf in weights: counted per tensor as tensors pass through a conversion, refused all at
once at the end (``--allow-nonfinite`` converts anyway), with names folded so that a thousand
broken layers fit in one line."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from converters.errors import ConversionError

from .dtypes import dtype_name
from .origins import FileOrigins
from .source import Located, TensorSource


def _finite(tensor: torch.Tensor) -> bool:
    """One read-only pass: NaN propagates through min/max, Inf shows as an extreme (``aminmax``
    allocates nothing, where ``isfinite().all()`` builds a boolean tensor of the same size)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


class NonfiniteCheck:
    """Counts NaN and Inf per tensor as tensors pass; :meth:`finish` refuses them all at once.

    ``allow=True`` checks nothing (``--allow-nonfinite``)."""

    def __init__(self, allow: bool = False):
        self.allow = allow
        self.found: list[tuple[str, int, int]] = []

    def check(self, name: str, tensor: torch.Tensor) -> bool:
        if self.allow or _finite(tensor):
            return True
        self.found.append((name, int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())))
        return False

    def check_cast(self, name: str, before: torch.Tensor, after: torch.Tensor) -> None:
        """A narrowing cast that turned finite values into Inf (overflow)."""
        if self.allow or _finite(after) or not _finite(before):
            return
        self.found.append((f"{name} (overflow casting to {dtype_name(after.dtype)})", 0, int(torch.isinf(after).sum())))

    def finish(self) -> None:
        if self.found:
            raise ConversionError(f"nonfinite weights in {len(self.found)} tensor(s), refused (--allow-nonfinite "
                                  f"converts anyway): {describe_counts(self.found)}")


_DIGIT_RUN = re.compile(r"[0-9]+")


def describe_counts(found: list[tuple[str, int, int]]) -> str:
    """``name: 2 NaN, 1 Inf; ...`` with names differing in one number folded together:
    ``model.layers.{0,3,7}.mlp.down_proj.weight: NaN 1/0/4, Inf 0/2/0``."""
    groups: dict[tuple[str, int], list[tuple[str, int, int, str]]] = {}
    for name, nan, inf in found:
        runs = list(_DIGIT_RUN.finditer(name))
        key = (_DIGIT_RUN.sub("#", name), len(runs))
        groups.setdefault(key, []).append((name, nan, inf, ""))
    parts = []
    for (pattern, _), members in groups.items():
        folded = _fold(members) if len(members) >= 3 else None
        if folded:
            parts.append(folded)
        else:
            parts.extend(f"{name}: {_counts(nan, inf)}" for name, nan, inf, _ in members)
    return "; ".join(parts)


def _counts(nan: int, inf: int) -> str:
    return ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if p) or "nonfinite"


def _fold(members) -> str | None:
    """Members differing in exactly one digit run: ``prefix{a,b,c}suffix: NaN x/y/z, Inf ...``."""
    split = [_DIGIT_RUN.split(m[0]) for m in members]
    numbers = [_DIGIT_RUN.findall(m[0]) for m in members]
    varying = [k for k in range(len(numbers[0])) if len({n[k] for n in numbers}) > 1]
    if len(varying) != 1:
        return None
    k = varying[0]
    first = numbers[0]
    head = "".join(split[0][i] + first[i] for i in range(k)) + split[0][k]
    tail = split[0][k + 1] + "".join(first[i] + split[0][i + 1] for i in range(k + 1, len(first)))
    index = ",".join(n[k] for n in numbers)
    nans = "/".join(str(m[1]) for m in members)
    infs = "/".join(str(m[2]) for m in members)
    return f"{head}{{{index}}}{tail}: NaN {nans}, Inf {infs}"


class CheckedSource(Mapping):
    """A lazy source whose tensors go through a :class:`NonfiniteCheck` as they are read (by their
    names in the source, i.e. as the user's files call them), and are recorded in ``origins``
    where the source knows their place on disk (``extent_of``)."""

    def __init__(self, source: TensorSource | Mapping[str, torch.Tensor], check: NonfiniteCheck,
                 origins: FileOrigins | None = None):
        self.source, self.check, self.origins = source, check, origins

    def __iter__(self):
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)

    def __contains__(self, name: object) -> bool:
        return name in self.source

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self.source[name]
        self.check.check(name, tensor)
        if self.origins is not None and isinstance(self.source, Located):
            extent = self.source.extent_of(name)
            if extent is not None:
                self.origins.record(tensor, *extent)
        return tensor

    def shape_of(self, name: str) -> torch.Size:
        return self.source.shape_of(name)

    def dtype_of(self, name: str) -> torch.dtype:
        return self.source.dtype_of(name)
