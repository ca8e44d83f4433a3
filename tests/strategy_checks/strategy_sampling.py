"""Deterministic sampling for strategy meta-tests."""
from __future__ import annotations

from functools import lru_cache
from random import Random

from hypothesis import HealthCheck, Phase, find, given, seed, settings
from hypothesis import strategies as st

SAMPLE_SEED = 20240


def sample(strategy: st.SearchStrategy, n: int, seed_value: int = SAMPLE_SEED) -> list:
    """``n`` values drawn by Hypothesis's own generator with a fixed seed: the same list on every
    run, and the same mix of simple and complex values a real test sees."""
    out: list = []

    @seed(seed_value)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value):
        out.append(value)

    collect()
    return out


@lru_cache(maxsize=None)
def cached_sample(key: str, n: int) -> tuple:
    """Samples shared between tests of one session, keyed by a name from :data:`STRATEGIES`."""
    return tuple(sample(STRATEGIES[key](), n))


def minimal(strategy: st.SearchStrategy, condition=lambda value: True):
    """The value Hypothesis shrinks to, deterministically."""
    return find(strategy, condition, settings=settings(database=None, max_examples=2000, deadline=None,
                                                       suppress_health_check=list(HealthCheck)),
                random=Random(0))


def simplest(strategy: st.SearchStrategy):
    """The value of the all-simplest choice sequence: Hypothesis generates it first, and it is what
    shrinking converges to for a predicate every value satisfies (no shrink run needed to see it)."""
    return find(strategy, lambda value: True,
                settings=settings(database=None, phases=[Phase.generate], deadline=None,
                                  suppress_health_check=list(HealthCheck)),
                random=Random(0))


def _strategies():
    import strategies

    table = {"generic": strategies.native_configs}
    for arch in strategies.architectures():
        table[arch] = strategies.for_architecture(arch).native_configs
    return table


class _Lazy(dict):
    def __missing__(self, key):
        self.update(_strategies())
        return dict.__getitem__(self, key)


STRATEGIES = _Lazy()
