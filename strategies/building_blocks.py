"""Shared Hypothesis building blocks for native configs.

Conventions (Hypothesis's "strategies that shrink" guidance, STYLE.md):

- **Construct, don't filter.** Every strategy builds valid values directly (``heads = kv_heads *
  group``; ``high_freq_factor = low + gap``; longrope factor lists of exactly ``rotary_dim / 2``), so
  there is no ``filter``/``assume`` and no health-check pressure.
- **Simplest first.** In every ``one_of``/``sampled_from`` the first choice is the plain case (no
  bias, no or default rotary, RMSNorm, ``pre`` placement, no window), so failures shrink to small,
  ordinary configs and the remaining feature in a minimal example is the one that matters. (The
  shrinker orders choice sequences shortlex, so a choice that draws fewer further values also wins:
  put it first.)
- **Related values are drawn next to each other** (a head layout, then the rotary that depends on
  its ``head_dim``; a max position, then the originals that must not exceed it).
- **Small but awkward sizes**: hidden 8..48 not rounded to 8, vocab 17..97, 1..3 layers, head_dim
  2..16, single KV heads, windows 1..8 and ``original_max_position_embeddings`` 4..16, so a forward
  pass of a few dozen tokens exceeds every window and every original context cheaply.

Choices are passed as tuples of names (simplest first); the per-architecture modules narrow them.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import product
from typing import Sequence

from hypothesis import strategies as st

import native
from native.feedforward_config import ACTIVATIONS
from native.lengths import length_thresholds

# ------------------------------------------------------------------------------------ constants
MIN_HIDDEN, MAX_HIDDEN = 8, 48
MIN_VOCAB, MAX_VOCAB = 17, 97
MAX_LAYERS = 3
MIN_HEAD_DIM, MAX_HEAD_DIM = 2, 16
MAX_KV_HEADS, MAX_GROUP = 4, 4
MAX_WINDOW = 8
MIN_ORIGINAL, MAX_ORIGINAL = 4, 16
MIN_MAX_POSITION, MAX_MAX_POSITION = 8, 64
MAX_INTERMEDIATE = 64
MAX_EXPERTS = 6

#: Rotary kinds, simplest first. "none" draws nothing further, so it is also what the shrinker
#: (shortlex on the choice sequence) prefers whenever a failure does not need positions.
ROTARY_KINDS = ("none", "default", "linear", "dynamic", "llama3", "yarn", "longrope")
ROTARY_FRACTIONS = ("full", "partial")
NORM_KINDS = ("rms", "layer", "layer_no_bias")
QK_NORMS = ("none", "head", "full")
HIDDEN_POLICIES = ("free", "multiple_of_heads", "heads_times_head_dim")
LAYER_PATTERN_KINDS = ("uniform", "alternating", "every_k", "suffix", "prefix", "arbitrary")
WINDOW_MODES = ("none", "uniform", "patterned")
FEED_FORWARDS = ("mlp", "moe")
MULTIPLIERS = ("none", "sqrt_hidden", "any")
OPTIONAL = ("none", "any")  # for softmax scale and softcaps


def cached(factory):
    """Memoise a strategy factory on its (hashable) arguments, lists turned into tuples.

    Building a strategy object is cheap, but Hypothesis validates each new one on first draw, and
    the config strategies draw from hundreds of small strategies per example: reusing them makes
    generation about 5x faster."""
    memo = functools.lru_cache(maxsize=None)(factory)

    def freeze(value):
        return tuple(value) if isinstance(value, list) else value

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        return memo(*(freeze(a) for a in args), **{k: freeze(v) for k, v in kwargs.items()})

    return wrapper


@cached
def choice(values: Sequence) -> st.SearchStrategy:
    """``sampled_from(values)``, memoised: the first value is the one failures shrink to."""
    return st.sampled_from(tuple(values))


# ---------------------------------------------------------------------------------------- sizes
@cached
def hidden_sizes(min_value: int = MIN_HIDDEN, max_value: int = MAX_HIDDEN) -> st.SearchStrategy[int]:
    """Any integer in range: odd and non-multiples of 8 are as likely as round ones."""
    return st.integers(min_value, max_value)


@cached
def vocab_sizes(min_value: int = MIN_VOCAB, max_value: int = MAX_VOCAB) -> st.SearchStrategy[int]:
    return st.integers(min_value, max_value)


@cached
def layer_counts(min_value: int = 1, max_value: int = MAX_LAYERS) -> st.SearchStrategy[int]:
    return st.integers(min_value, max_value)


@cached
def intermediate_sizes(max_value: int = MAX_INTERMEDIATE) -> st.SearchStrategy[int]:
    return st.integers(1, max_value)


@cached
def windows(max_value: int = MAX_WINDOW) -> st.SearchStrategy[int]:
    return st.integers(1, max_value)


@cached
def max_positions(min_value: int = MIN_MAX_POSITION, max_value: int = MAX_MAX_POSITION) -> st.SearchStrategy[int]:
    return st.integers(min_value, max_value)


@cached
def originals(max_position: int) -> st.SearchStrategy[int]:
    """``original_max_position_embeddings``: 4..16, never above the model's max position."""
    return st.integers(MIN_ORIGINAL, max(MIN_ORIGINAL, min(MAX_ORIGINAL, max_position)))


@cached
def epsilons() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from([1e-5, 1e-6]), st.floats(1e-8, 1e-2))


@cached
def thetas() -> st.SearchStrategy[float]:
    """Rotary bases: the common ones, and anything from 2 to 1e6 (small bases rotate fast)."""
    return st.one_of(st.just(10000.0), st.sampled_from([500000.0, 1000000.0, 100.0]),
                     st.floats(2.0, 1e6, allow_nan=False, allow_infinity=False))


@cached
def positive_floats(low: float, high: float, first: float | None = None) -> st.SearchStrategy[float]:
    values = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return values if first is None else st.one_of(st.just(first), values)


# --------------------------------------------------------------------------------- head layouts
@dataclass(frozen=True)
class HeadLayout:
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


@cached
def head_dims(*, even: bool = True, min_value: int = MIN_HEAD_DIM,
              max_value: int = MAX_HEAD_DIM) -> st.SearchStrategy[int]:
    if even:
        low, high = max(1, (min_value + 1) // 2), max(1, max_value // 2)
        return st.integers(low, max(low, high)).map(lambda h: 2 * h)
    return st.integers(min_value, max(min_value, max_value))


@cached
@st.composite
def head_layouts(draw, *, max_kv_heads: int = MAX_KV_HEADS, max_group: int = MAX_GROUP,
                 even_head_dim: bool = True, min_head_dim: int = MIN_HEAD_DIM,
                 max_head_dim: int = MAX_HEAD_DIM, max_q_width: int | None = None) -> HeadLayout:
    """``kv_heads`` then ``group``, ``heads = kv_heads * group``: MQA (kv=1), MHA (group=1) and GQA
    all reachable, shrinking to one head. ``max_q_width`` caps ``heads * head_dim`` (for
    architectures whose hidden size must equal it)."""
    kv_heads = draw(st.integers(1, max_kv_heads))
    group = draw(st.integers(1, max_group))
    heads = kv_heads * group
    if max_q_width is not None:
        max_head_dim = min(max_head_dim, max(min_head_dim, max_q_width // heads))
    head_dim = draw(head_dims(even=even_head_dim, min_value=min_head_dim, max_value=max_head_dim))
    return HeadLayout(heads, kv_heads, head_dim)


@cached
@st.composite
def hidden_for(draw, layout: HeadLayout, policy: str = "free", *, min_value: int = MIN_HIDDEN,
               max_value: int = MAX_HIDDEN) -> int:
    """A hidden size compatible with ``layout`` under ``policy`` (HIDDEN_POLICIES): free; a multiple
    of ``heads`` (HF Llama's ``validate_architecture``); or exactly ``heads * head_dim``."""
    if policy == "free":
        return draw(hidden_sizes(min_value, max_value))
    if policy == "multiple_of_heads":
        low = max(1, -(-min_value // layout.heads))
        high = max(low, max_value // layout.heads)
        return layout.heads * draw(st.integers(low, high))
    if policy == "heads_times_head_dim":
        return layout.heads * layout.head_dim
    raise ValueError(f"unknown hidden policy {policy!r}; choose from {HIDDEN_POLICIES}")


# --------------------------------------------------------------------------------------- rotary
def fraction_for(rotary_dim: int, head_dim: int) -> float:
    """The float ``f`` with ``int(head_dim * f) == rotary_dim`` (how native and HF both read it)."""
    f = rotary_dim / head_dim
    while int(head_dim * f) < rotary_dim:
        f = math.nextafter(f, 2.0)
    while int(head_dim * f) > rotary_dim:
        f = math.nextafter(f, 0.0)
    return f


def fraction_choices(head_dim: int, fractions: Sequence[str] = ROTARY_FRACTIONS) -> list[str]:
    """Which of ``fractions`` are possible for ``head_dim`` (full needs it even; partial needs >= 3)."""
    out = []
    if "full" in fractions and head_dim % 2 == 0:
        out.append("full")
    if "partial" in fractions and head_dim >= 3:
        out.append("partial")
    return out


@cached
@st.composite
def rotary_fractions(draw, head_dim: int, fractions: Sequence[str] = ROTARY_FRACTIONS) -> float:
    """A fraction whose rotary dim is even and > 0: 1.0, or ``2k / head_dim`` with ``2k < head_dim``."""
    choices = fraction_choices(head_dim, fractions)
    if not choices:
        raise ValueError(f"no rotary fraction in {tuple(fractions)} fits head_dim={head_dim}")
    picked = draw(choice(tuple(choices)))
    if picked == "full":
        return 1.0
    half = draw(st.integers(1, (head_dim - 1) // 2))
    return fraction_for(2 * half, head_dim)


@cached
def scale_factors(hf_valid: bool) -> st.SearchStrategy[float]:
    """Rope scaling factors. HF warns below 1, so ``hf_valid`` keeps them >= 1."""
    return positive_floats(1.0 if hf_valid else 0.25, 8.0, first=2.0)


@cached
@st.composite
def rotaries(draw, head_dim: int, max_position: int, *, kinds: Sequence[str] = ROTARY_KINDS,
             fractions: Sequence[str] = ROTARY_FRACTIONS, hf_valid: bool = False):
    """A rotary config of one of ``kinds`` for heads of ``head_dim`` in a model whose
    ``max_position_embeddings`` is ``max_position``.

    ``hf_valid=True`` keeps to what transformers' rope validation accepts without a warning: factors
    >= 1; Llama3's ``original < max_position``; YaRN's ``factor`` explicit and equal to
    ``max_position / original`` (or ``original == max_position``); LongRoPE's ``factor`` explicit.
    """
    usable = [k for k in kinds if k == "none" or fraction_choices(head_dim, fractions)]
    if not usable:
        raise ValueError(f"no rotary kind in {tuple(kinds)} fits head_dim={head_dim} with fractions {tuple(fractions)}")
    kind = draw(choice(tuple(usable)))
    if kind == "none":
        return native.NoRotary()
    theta = draw(thetas())
    fraction = draw(rotary_fractions(head_dim, fractions))
    common = dict(theta=theta, fraction=fraction)
    if kind == "default":
        return native.DefaultRotary(**common)
    if kind in ("linear", "dynamic"):
        cls = native.LinearRotary if kind == "linear" else native.DynamicRotary
        return cls(**common, factor=draw(scale_factors(hf_valid)))
    # transformers warns unless llama3's original context is strictly below max_position_embeddings
    original = draw(originals(max_position - 1 if hf_valid and kind == "llama3" else max_position))
    if kind == "llama3":
        low = draw(positive_floats(0.25, 4.0, first=1.0))
        high = low + draw(positive_floats(0.5, 8.0, first=3.0))
        return native.Llama3Rotary(**common, factor=draw(scale_factors(hf_valid)), low_freq_factor=low,
                                   high_freq_factor=high, original_max_position_embeddings=original)
    if kind == "yarn":
        if hf_valid:
            if original == max_position:
                factor = draw(scale_factors(True))
            else:
                factor = max_position / original
        else:
            factor = draw(st.one_of(st.none(), scale_factors(False)))
        beta_slow = draw(positive_floats(0.25, 4.0, first=1.0))
        beta_fast = beta_slow + draw(positive_floats(0.5, 64.0, first=31.0))
        mscale = draw(st.one_of(st.none(), positive_floats(0.1, 2.0)))
        mscale_all_dim = draw(st.one_of(st.none(), positive_floats(0.1, 2.0)))
        attention_factor = draw(st.one_of(st.none(), positive_floats(0.5, 2.0)))
        truncate = draw(st.booleans().map(lambda b: not b))  # True (the default) first
        return native.YarnRotary(**common, factor=factor, original_max_position_embeddings=original,
                                 beta_fast=beta_fast, beta_slow=beta_slow, mscale=mscale,
                                 mscale_all_dim=mscale_all_dim, attention_factor=attention_factor,
                                 truncate=truncate)
    if kind == "longrope":
        n = int(head_dim * fraction) // 2
        factors = st.lists(positive_floats(0.5, 16.0), min_size=n, max_size=n).map(tuple)
        short, long = draw(factors), draw(factors)
        if hf_valid:
            factor = draw(st.one_of(st.just(max_position / original), scale_factors(True)))
        else:
            factor = draw(st.one_of(st.none(), scale_factors(False)))
        attention_factor = draw(st.one_of(st.none(), positive_floats(0.5, 2.0)))
        return native.LongRopeRotary(**common, short_factor=short, long_factor=long,
                                     original_max_position_embeddings=original, factor=factor,
                                     attention_factor=attention_factor)
    raise ValueError(f"unknown rotary kind {kind!r}; choose from {ROTARY_KINDS}")


# ----------------------------------------------------------------------------------------- norms
@cached
@st.composite
def norms(draw, kinds: Sequence[str] = NORM_KINDS, eps: float | None = None):
    """RMSNorm, zero-centred RMSNorm (``rms_zero_centered``: Gemma's ``1 + w``; drawn only where
    asked), LayerNorm with bias, LayerNorm without bias; ``eps`` fixed when given (HF models share
    one epsilon between all their norms)."""
    kind = draw(choice(tuple(kinds)))
    value = eps if eps is not None else draw(epsilons())
    if kind in ("rms", "rms_zero_centered"):
        return native.RMSNormConfig(eps=value, zero_centered=kind == "rms_zero_centered")
    if kind in ("layer", "layer_no_bias"):
        return native.LayerNormConfig(eps=value, bias=kind == "layer")
    raise ValueError(f"unknown norm kind {kind!r}; choose from {NORM_KINDS + ('rms_zero_centered',)}")


# ---------------------------------------------------------------------------------------- biases
@dataclass(frozen=True)
class BiasPattern:
    q: bool
    k: bool
    v: bool
    o: bool

    def as_kwargs(self) -> dict[str, bool]:
        return dict(q_bias=self.q, k_bias=self.k, v_bias=self.v, o_bias=self.o)


BIAS_NONE = (BiasPattern(False, False, False, False),)
BIAS_ALL_OR_NOTHING = (BiasPattern(False, False, False, False), BiasPattern(True, True, True, True))
BIAS_QKV = (BiasPattern(True, True, True, False),)  # Qwen2: q/k/v biased, o not
#: All 16 q/k/v/o patterns, fewest biases first.
BIAS_ANY = tuple(sorted((BiasPattern(*bits) for bits in product((False, True), repeat=4)),
                        key=lambda p: (sum(p.as_kwargs().values()), tuple(p.as_kwargs().values()))))


@cached
def bias_patterns(allowed: Sequence[BiasPattern] = BIAS_ANY) -> st.SearchStrategy[BiasPattern]:
    return choice(tuple(allowed))


# -------------------------------------------------------------------------------- MLP and MoE
@cached
def activations(allowed: Sequence[str] = ACTIVATIONS) -> st.SearchStrategy[str]:
    return choice(tuple(allowed))


@cached
@st.composite
def mlps(draw, *, activation_choices: Sequence[str] = ACTIVATIONS, gated: Sequence[bool] = (True, False),
         biases: Sequence[bool] = (False, True), max_intermediate: int = MAX_INTERMEDIATE):
    return native.MLPConfig(intermediate=draw(intermediate_sizes(max_intermediate)),
                            gated=draw(choice(tuple(gated))),
                            activation=draw(activations(activation_choices)),
                            bias=draw(choice(tuple(biases))))


@cached
@st.composite
def moes(draw, *, activation_choices: Sequence[str] = ACTIVATIONS, shared: Sequence[bool] = (False, True),
         shared_gate: Sequence[bool] = (False, True), normalize: Sequence[bool] = (True, False),
         max_experts: int = MAX_EXPERTS, max_intermediate: int = 32):
    """Experts 1..6, ``top_k <= experts`` (drawn as a count up to ``experts``), optional shared
    expert with an optional sigmoid gate."""
    experts = draw(st.integers(1, max_experts))
    top_k = draw(st.integers(1, experts))
    intermediate = draw(intermediate_sizes(max_intermediate))
    activation = draw(activations(activation_choices))
    normalize_top_k = draw(choice(tuple(normalize)))
    has_shared = draw(choice(tuple(shared)))
    shared_intermediate = draw(intermediate_sizes(max_intermediate)) if has_shared else None
    gate = draw(choice(tuple(shared_gate))) if has_shared else False
    return native.MoEConfig(experts=experts, top_k=top_k, intermediate=intermediate, activation=activation,
                            normalize_top_k=normalize_top_k, shared_intermediate=shared_intermediate,
                            shared_gate=gate)


# ---------------------------------------------------------------------------------- layer patterns
@dataclass(frozen=True)
class LayerPattern:
    """Which layers are the *variant* kind (e.g. sliding-window layers).

    - ``uniform``: none (``param`` None).
    - ``alternating``: every other layer, starting with layer 0 when ``param`` is 0, else layer 1
      (Gemma2: ``layer_types[i] = sliding if (i + 1) % 2``).
    - ``every_k``: all but every ``param``-th layer (Gemma3: sliding unless ``(i + 1) % k == 0``).
    - ``suffix``: layers ``i >= param`` (Qwen2: sliding from ``max_window_layers`` on).
    - ``prefix``: layers ``i < param``.
    - ``arbitrary``: any subset (Qwen2-MoE ``mlp_only_layers``, explicit ``layer_types``).
    """

    kind: str
    flags: tuple[bool, ...]
    param: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.flags)


def pattern_flags(kind: str, num_layers: int, param: int | None) -> tuple[bool, ...]:
    if kind == "uniform":
        return (False,) * num_layers
    if kind == "alternating":
        return tuple(i % 2 == param for i in range(num_layers))
    if kind == "every_k":
        return tuple((i + 1) % param != 0 for i in range(num_layers))
    if kind == "suffix":
        return tuple(i >= param for i in range(num_layers))
    if kind == "prefix":
        return tuple(i < param for i in range(num_layers))
    raise ValueError(f"pattern kind {kind!r} has no rule; choose from {LAYER_PATTERN_KINDS}")


@cached
@st.composite
def layer_patterns(draw, num_layers: int, kinds: Sequence[str] = LAYER_PATTERN_KINDS) -> LayerPattern:
    kind = draw(choice(tuple(kinds)))
    if kind == "arbitrary":
        flags = tuple(draw(st.lists(st.booleans(), min_size=num_layers, max_size=num_layers)))
        return LayerPattern(kind, flags)
    param = {
        "uniform": st.none(),
        "alternating": st.integers(0, 1),
        "every_k": st.integers(2, 6),
        "suffix": st.integers(0, num_layers),
        "prefix": st.integers(0, num_layers),
    }[kind]
    value = draw(param)
    return LayerPattern(kind, pattern_flags(kind, num_layers, value), value)


# ------------------------------------------------------------------------------ forward lengths
def min_forward_length(cfg: native.ModelConfig) -> int:
    """The shortest sequence that exceeds every sliding window, every rotary
    ``original_max_position_embeddings`` and, when a dynamic-NTK rotary is present, the model's
    ``max_position_embeddings`` (where dynamic scaling starts), so all of them are exercised."""
    return max([1, *length_thresholds(cfg, (native.DynamicRotary,))]) + 1
