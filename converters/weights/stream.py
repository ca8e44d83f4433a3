"""The streaming driver: run a list of weight rules over a (possibly lazy) state dict.

Everything that can be checked without loading data is checked up-front, when
:func:`convert_stream` is called: double claims (a declaration bug), missing and extra source
tensors (from ``source.keys()``), and — when the source has ``shape_of(name)`` — every shape. Then
the returned iterator runs the rules in order, fetching a rule's sources only when it runs and
yielding its outputs one at a time, holding no reference to them afterwards: peak memory is about
one rule's inputs plus outputs.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from torch import Tensor

from ..errors import ConversionError
from .rules import DIRECTIONS, SIDES, WeightRule


def _list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def check_claims(rules: Sequence[WeightRule]) -> None:
    """Refuse a name claimed by two rules on either side, naming it and both rules."""
    for side in SIDES:
        owner: dict[str, WeightRule] = {}
        for rule in rules:
            for name in rule.claims(side):
                if name in owner:
                    raise ConversionError(f"{name}: claimed by two rules ({owner[name].describe()}; {rule.describe()}) "
                                          "— a declaration bug")
                owner[name] = rule


def _shape_of(source: Mapping[str, Tensor], name: str) -> tuple[int, ...] | None:
    shape_of = getattr(source, "shape_of", None)
    return tuple(shape_of(name)) if callable(shape_of) else None


def _check_shape(name: str, shape: tuple[int, ...], expected_shapes: Mapping[str, Sequence[int]] | None) -> None:
    if expected_shapes is not None and name in expected_shapes and tuple(expected_shapes[name]) != tuple(shape):
        raise ConversionError(f"{name}: shape {tuple(shape)}, expected {tuple(expected_shapes[name])}")


def convert_stream(rules: Iterable[WeightRule], source: Mapping[str, Tensor], direction: str,
                   expected_shapes: Mapping[str, Sequence[int]] | None = None, *, copy: bool = True,
                   blocks: Callable[[list[Tensor], tuple[int, ...]], Any] | None = None
                   ) -> Iterator[tuple[str, Tensor]]:
    """Convert ``source`` (native names for ``"export"``, HF names for ``"import"``) by ``rules``.

    Yields ``(target_name, tensor)`` in rule order; every tensor is contiguous and owns its storage,
    shared with no other output and, with ``copy=True``, with no source tensor (``copy=False``:
    renamed tensors pass through uncopied — for sources whose tensors are the caller's alone, such
    as a lazy reader of files). Raises
    :class:`ConversionError` naming the tensor for: a name claimed twice by the rules, a required
    source missing, a source key claimed by no rule (extra), a source shape different from
    ``expected_shapes[name]`` (names absent from ``expected_shapes`` are not checked), a rule
    whose sources differ in dtype, and a tensor a transform rejects. All but the last two are
    raised by this call, before any tensor is loaded; shapes are checked up-front when the source
    has ``shape_of(name)``, else right after each tensor is loaded.

    ``blocks(parts, shape)`` (with ``copy=False``), for a writer of bytes, which needs neither
    assembled nor owned tensors: every output is yielded as what this returns for its parts,
    called while the rule's source tensors are alive. An import that only concatenates its
    inputs (:meth:`WeightRule.import_blocks`) gives its blocks; any other output is one part, a
    contiguous tensor that may be a view of a source (:meth:`WeightRule.run_views`: no clone).
    E.g. ``checkpoints.native_format.Concatenation``, which the writers write part by part.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if blocks is not None and copy:
        raise ValueError("blocks needs copy=False (its parts may be views of the sources)")
    rules = list(rules)
    check_claims(rules)
    keys = list(source.keys())
    present = set(keys)
    missing = [n for rule in rules for n in rule.sources(direction) if n not in present]
    if missing:
        raise ConversionError(f"{missing[0]}: missing from the {direction} source"
                              + (f" (missing: {_list(missing)})" if len(missing) > 1 else ""))
    claimed = {n for rule in rules for n in rule.sources(direction) + rule.optional_sources(direction)}
    extra = [n for n in keys if n not in claimed]
    if extra:
        raise ConversionError(f"{extra[0]}: not claimed by any {direction} rule"
                              + (f" (unclaimed: {_list(extra)})" if len(extra) > 1 else ""))
    if expected_shapes is not None:
        for name in keys:
            shape = _shape_of(source, name)
            if shape is not None:
                _check_shape(name, shape, expected_shapes)
    return _stream(rules, source, direction, present, expected_shapes, copy, blocks)


def _load(source, name, expected_shapes) -> Tensor:
    tensor = source[name]
    _check_shape(name, tuple(tensor.shape), expected_shapes)
    return tensor


def _run(rule: WeightRule, direction: str, tensors: list[Tensor], copy: bool, blocks) -> list:
    if blocks is None:
        return rule.run(direction, tensors, copy)
    parts = rule.import_blocks(tensors) if direction == "import" else None
    if parts is None:
        outputs = rule.run_views(direction, tensors)
        if outputs is None:
            outputs = rule.run(direction, tensors, copy)
        parts = [([t], tuple(t.shape)) for t in outputs]
    return [blocks(p, shape) for p, shape in parts]


def _stream(rules, source, direction, present, expected_shapes, copy, blocks) -> Iterator[tuple[str, Tensor]]:
    for rule in rules:
        names = list(rule.sources(direction)) + [n for n in rule.optional_sources(direction) if n in present]
        tensors = [_load(source, name, expected_shapes) for name in names]
        if len({t.dtype for t in tensors}) > 1:
            raise ConversionError(f"{names[0]}: dtypes differ within one rule: "
                                  + ", ".join(f"{n} {t.dtype}" for n, t in zip(names, tensors)))
        outputs = _run(rule, direction, tensors, copy, blocks)
        del tensors
        targets = rule.targets(direction)
        outputs.reverse()
        for name in targets:
            out = outputs.pop()
            yield name, out
            del out
