"""The one failure type of the property suite.

A :class:`PropertyViolation` says which law broke, for which architecture, where (a config path, an
HF key or a tensor name) and how (expected vs actual, or the error against its tolerance). It is an
``AssertionError``, so pytest and Hypothesis treat it as a test failure and shrink it.
"""
from __future__ import annotations

from typing import Any


class PropertyViolation(AssertionError):
    """``{property}[{architecture}] {where}: {detail}``."""

    def __init__(self, property: str, architecture: str, where: str, detail: str):
        self.property = property
        self.architecture = architecture
        self.where = where
        self.detail = detail
        super().__init__(f"{property}[{architecture}] {where}: {detail}")


def short(value: Any, limit: int = 160) -> str:
    """``repr`` cut to ``limit`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Reporter:
    """Raises violations of one property for one converter: ``fail(where, detail)``."""

    def __init__(self, property: str, converter: Any):
        self.property = property
        self.architecture = getattr(converter, "model_type", "") or type(converter).__name__

    def fail(self, where: str, detail: str) -> PropertyViolation:
        raise PropertyViolation(self.property, self.architecture, where, detail)

    def expect(self, condition: bool, where: str, detail: str) -> None:
        if not condition:
            self.fail(where, detail)

    def mismatch(self, where: str, expected: Any, actual: Any) -> PropertyViolation:
        raise PropertyViolation(self.property, self.architecture, where,
                                f"expected {short(expected)}, got {short(actual)}")
