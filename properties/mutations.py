"""Single-field mutations of a native config, for the injectivity half of ``architecture_coverage``.

:func:`mutations` proposes, for one architecture field path (``native.architecture_fields``), other
values of the same kind: a bool flipped, an int moved by one or doubled, a float scaled, an
Optional switched between ``None`` and a value, a string swapped for another legal one, a
polymorphic section (``….kind``) swapped for another kind with valid parameters, the layer pattern
lengthened, shortened or re-pointed. Values come from a seeded ``random.Random`` so a saved example
replays exactly. Each proposal is only a candidate: :func:`mutate` builds it through
``native.replace_path`` and returns ``None`` when the native schema rejects it (a ``ConfigError``
means the mutation was invalid, not that the converter is wrong).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Iterator

import native
from native import (
    AttentionConfig, DeepSeekMoEConfig, DefaultRotary, DynamicRotary, LayerNormConfig, LinearRotary, Llama3Rotary,
    LongRopeRotary, MLAConfig, MLPConfig, MoEConfig, NoRotary, RMSNormConfig, YarnRotary,
)
from native.config import PLACEMENTS, QK_NORM_SCOPES
from native.feedforward_config import ACTIVATIONS, GROUP_SCORES, SCORINGS
from native.schema import ConfigError

#: The strings each string field may take.
STRING_CHOICES = {"placement": PLACEMENTS, "activation": ACTIVATIONS, "qk_norm_scope": QK_NORM_SCOPES,
                  "scoring": SCORINGS, "group_score": GROUP_SCORES}


@dataclasses.dataclass(frozen=True)
class Mutation:
    path: str  # the architecture field that changes
    target: str  # the path actually replaced (the section, for a ``.kind`` path)
    old: Any
    new: Any

    def describe(self) -> str:
        return f"{self.path}: {_brief(self.old)} -> {_brief(self.new)}"


def _brief(value: Any) -> str:
    if isinstance(value, native.schema.Section):
        return f"{type(value).__name__}({', '.join(f'{f.name}={getattr(value, f.name)!r}' for f in dataclasses.fields(value))})"
    return repr(value)


def _ints(value: int, rnd: random.Random) -> list[int]:
    out = [value + 1, value * 2, value - 1, value + rnd.randint(2, 5)]
    return [v for v in out if v >= 1 and v != value]


def _floats(value: float, rnd: random.Random) -> list[float]:
    scale = rnd.uniform(1.25, 3.0)
    return [v for v in (value * scale, value / scale) if v != value]


def _rotary_kinds(current, head_dim: int, rnd: random.Random) -> list:
    theta = getattr(current, "theta", 10000.0)
    fraction = getattr(current, "fraction", 1.0)
    half = DefaultRotary(theta, fraction).rotary_dim(head_dim) // 2
    orig = rnd.randint(2, 16)
    factor = rnd.choice((2.0, 4.0, 1.5))
    options = [
        NoRotary(),
        DefaultRotary(theta, fraction),
        LinearRotary(theta, fraction, factor),
        DynamicRotary(theta, fraction, factor),
        Llama3Rotary(theta, fraction, factor, 1.0, 4.0, orig),
        YarnRotary(theta, fraction, factor, orig),
        LongRopeRotary(theta, fraction, tuple(1.0 + i / 8 for i in range(half)),
                       tuple(2.0 + i / 4 for i in range(half)), orig),
    ]
    return [o for o in options if type(o) is not type(current)]


def _norm_kinds(current) -> list:
    eps = getattr(current, "eps", 1e-5)
    return [RMSNormConfig(eps) if isinstance(current, LayerNormConfig) else LayerNormConfig(eps, True)]


def _feedforward_kinds(current, rnd: random.Random) -> list:
    if isinstance(current, DeepSeekMoEConfig):
        return [MLPConfig(current.intermediate, True, current.activation, False),
                MoEConfig(current.experts, current.top_k, current.intermediate, current.activation)]
    if isinstance(current, MoEConfig):
        return [MLPConfig(current.intermediate, True, current.activation, False)]
    experts = rnd.randint(2, 4)
    return [MoEConfig(experts, rnd.randint(1, experts), current.intermediate, current.activation)]


def _optional(path: str, cfg: native.ModelConfig, rnd: random.Random) -> list:
    """A value for an Optional field that is currently None, different from what None means."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf == "qk_norm":
        return [RMSNormConfig(1e-6), LayerNormConfig(1e-6, True)]
    if leaf == "window":
        return [rnd.randint(1, 8)]
    if leaf in ("shared_intermediate", "q_lora_rank"):
        return [rnd.randint(1, 32)]
    if leaf == "softmax_scale":
        head_dim = native.get_path(cfg, path.rsplit(".", 1)[0] + ".head_dim")
        return [head_dim ** -0.5 * rnd.uniform(1.25, 3.0)]
    if leaf == "factor":  # yarn/longrope: None means max_position / original
        rotary = native.get_path(cfg, path.rsplit(".", 1)[0])
        implied = cfg.max_position_embeddings / rotary.original_max_position_embeddings
        return [implied * rnd.uniform(1.25, 3.0)]
    return [rnd.uniform(0.5, 50.0)]


def mutations(cfg: native.ModelConfig, path: str, rnd: random.Random) -> Iterator[Mutation]:
    """Candidate single-field changes of ``path`` (an ``architecture_fields`` entry), in random order."""
    if path.endswith(".kind"):
        section_path = path[: -len(".kind")]
        section = native.get_path(cfg, section_path)
        parent = section_path.rsplit(".", 1)[-1]
        if isinstance(section, (RMSNormConfig, LayerNormConfig)):
            options = _norm_kinds(section) + ([None] if parent == "qk_norm" else [])
        elif isinstance(section, (MLPConfig, MoEConfig, DeepSeekMoEConfig)):
            options = _feedforward_kinds(section, rnd)
        elif isinstance(section, MLAConfig):  # multi-head latent attention → plain attention
            options = [AttentionConfig(heads=section.heads, kv_heads=section.heads, head_dim=section.qk_rope_head_dim,
                                       rotary=section.rotary)]
        else:
            head_dim = native.get_path(cfg, section_path.rsplit(".", 1)[0] + ".head_dim")
            options = _rotary_kinds(section, head_dim, rnd)
        rnd.shuffle(options)
        for new in options:
            yield Mutation(path, section_path, section.kind, new)
        return
    old = native.get_path(cfg, path)
    leaf = path.rsplit(".", 1)[-1]
    if path == "decoder.pattern":
        options = [old + (old[-1],)]
        if len(old) > 1:
            options.append(old[:-1])
        blocks = len(cfg.decoder.blocks)
        if blocks > 1:
            i = rnd.randrange(len(old))
            options.append(old[:i] + ((old[i] + 1) % blocks,) + old[i + 1:])
    elif isinstance(old, bool):
        options = [not old]
    elif old is None:
        options = _optional(path, cfg, rnd)
    elif leaf in STRING_CHOICES:
        options = [s for s in STRING_CHOICES[leaf] if s != old]
    elif isinstance(old, int):
        options = _ints(old, rnd)
    elif isinstance(old, float):
        options = _floats(old, rnd)
        if leaf == "fraction":
            options = [f for f in (0.5, 0.25, 0.75, 1.0, old / 2) if f != old]
    elif isinstance(old, tuple) and old and all(isinstance(v, (int, float)) for v in old):
        i = rnd.randrange(len(old))
        options = [old[:i] + (old[i] * rnd.uniform(1.25, 3.0),) + old[i + 1:]]
    elif isinstance(old, tuple):  # empty tuple (e.g. longrope factors of a 0-dim rotary): nothing to vary
        options = []
    else:
        options = []
    # An Optional field holding a value may also become None.
    if old is not None and not isinstance(old, (bool, str, tuple)) and _optional_field(cfg, path):
        options.append(None)
    rnd.shuffle(options)
    for new in options:
        yield Mutation(path, path, old, new)


def _optional_field(cfg: native.ModelConfig, path: str) -> bool:
    parent_path, _, leaf = path.rpartition(".")
    parent = native.get_path(cfg, parent_path) if parent_path else cfg
    field = next((f for f in dataclasses.fields(parent) if f.name == leaf), None)
    return field is not None and "None" in str(field.type)


def mutate(cfg: native.ModelConfig, mutation: Mutation) -> native.ModelConfig | None:
    """``cfg`` with the mutation applied, or None when the native schema refuses the result."""
    try:
        return native.replace_path(cfg, mutation.target, mutation.new)
    except (ConfigError, TypeError, ValueError, ZeroDivisionError):
        return None


def first_valid(cfg: native.ModelConfig, path: str, rnd: random.Random) -> tuple[Mutation, native.ModelConfig] | None:
    """The first candidate mutation of ``path`` that gives a valid, different config."""
    for mutation in mutations(cfg, path, rnd):
        changed = mutate(cfg, mutation)
        if changed is not None and changed != cfg:
            return mutation, changed
    return None
