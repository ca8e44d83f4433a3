"""Running a property under Hypothesis for one converter, and replaying saved cases.

Everything that is per architecture comes from the converter registry and, by convention, from
``strategies/<model_type>.py`` (found by ``strategies.for_architecture``):

- ``native_configs()``: native configs the converter must accept (most properties);
- ``hf_configs()``: HF config dicts in v4 and v5 forms (``hf_config_roundtrip``);
- ``unrepresentable_configs()``: native configs the format cannot express, either bare or as
  ``(config, field)`` pairs naming the field the refusal must mention (``unrepresentable_rejected``);
- optionally ``hf_examples()`` (real and default HF configs) and ``native_examples()``: explicit
  examples. HF examples the converter imports also serve the native properties, as configs — and
  for the tensor properties when they are small enough (:data:`MAX_EXAMPLE_PARAMETERS`).

A missing strategy module or function is an error, never a skip: a registered converter without its
strategies is a converter the gate does not check.

Saved failing cases (``tests/regressions/*.json``, see :mod:`fixtures.regressions`) are replayed by
:func:`replay`; a Hypothesis run can save its minimal failing case with ``save_failures=True``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, example, given, reject, settings as Settings
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption

import converters
import native
import strategies
from fixtures import budgets, profiles, rng
from fixtures.regressions import Regression, save_regression

from . import PROPERTIES, HF, NATIVE, UNREPRESENTABLE, Property

#: Explicit native examples above this many parameters run only the config properties.
MAX_EXAMPLE_PARAMETERS = 2_000_000


class MissingStrategy(LookupError):
    """A registered converter lacks the strategy a property needs."""


def strategy_module(model_type: str) -> ModuleType:
    try:
        return strategies.for_architecture(model_type)
    except KeyError as exc:
        raise MissingStrategy(f"converter {model_type!r} is registered but has no strategies/{model_type}.py "
                              f"({exc.args[0] if exc.args else exc}); every registered converter needs one") from None


_FUNCTIONS = {NATIVE: "native_configs", HF: "hf_configs", UNREPRESENTABLE: "unrepresentable_configs"}


def config_strategy(prop: Property, module: ModuleType) -> st.SearchStrategy:
    """The strategy of the ``config`` argument of ``prop`` for one architecture."""
    name = _FUNCTIONS[prop.inputs]
    factory = getattr(module, name, None)
    if not callable(factory):
        raise MissingStrategy(f"{module.__name__} has no {name}(), which {prop.name} needs")
    return factory()


def split_case(prop: Property, case: Any) -> tuple[Any, dict[str, Any]]:
    """``(config, extra kwargs)``: unrepresentable cases may come as ``(config, field)`` pairs in
    either order."""
    if prop.inputs == UNREPRESENTABLE and isinstance(case, tuple):
        cfg = next(v for v in case if isinstance(v, native.ModelConfig))
        field = next((v for v in case if isinstance(v, str)), None)
        return cfg, {"field": field}
    return case, {}


def call(prop: Property, converter, case: Any, seed: int, **kwargs: Any) -> None:
    config, extra = split_case(prop, case)
    prop.check(converter, config, seed, **extra, **kwargs)


def _parameters(cfg: native.ModelConfig) -> int:
    return sum(math.prod(shape) for shape in native.state_shapes(cfg).values())


def explicit_examples(prop: Property, converter, module: ModuleType) -> list[Any]:
    """The explicit cases of a property for one architecture (see the module docstring)."""
    hf_examples = list(getattr(module, "hf_examples", lambda: [])())
    if prop.inputs == HF:
        return hf_examples
    if prop.inputs != NATIVE:
        return []
    cases = list(getattr(module, "native_examples", lambda: [])())
    for hf in hf_examples:
        try:
            cases.append(converter.import_config(hf))
        except converters.ConversionError:
            continue  # hf_config_roundtrip reports it
    if budgets.property_class(prop.name) == budgets.WEIGHTS:
        cases = [c for c in cases if _parameters(c) <= MAX_EXAMPLE_PARAMETERS]
    unique = []
    for c in cases:
        if c not in unique:
            unique.append(c)
    return unique


@dataclasses.dataclass
class Failure:
    """The last failing case a Hypothesis run saw (the minimal one once it has finished)."""

    case: Any = None
    seed: int | None = None

    def regression(self, prop: Property, model_type: str, note: str = "") -> dict[str, Any]:
        config, _ = split_case(prop, self.case)
        key = "hf_config" if prop.inputs == HF else "native_config"
        value = config if prop.inputs == HF else config.to_dict()
        return {"architecture": model_type, "property": prop.name, key: value, "seed": self.seed, "note": note}


def hypothesis_test(name: str, converter, *, settings: Settings | None = None, examples: bool = True,
                    failure: Failure | None = None, kwargs: dict[str, Any] | None = None) -> Callable[[], None]:
    """A zero-argument Hypothesis test of property ``name`` against ``converter``: calling it runs
    the property over the architecture's strategy (and explicit examples) under ``settings``
    (default: the active profile's settings for this property, see fixtures.profiles). ``kwargs`` go
    to the property's check (e.g. ``device``/``dtypes`` of forward_equivalence's precision columns)."""
    prop = PROPERTIES[name]
    module = strategy_module(converter.model_type)
    configs = config_strategy(prop, module)
    record = failure if failure is not None else Failure()

    def run_case(config, seed):
        call(prop, converter, config, seed, **(kwargs or {}))

    cases = explicit_examples(prop, converter, module) if examples else []
    return _given(f"{name}__{converter.model_type}", run_case, configs, cases, record,
                  settings or profiles.settings_for(name))


def _given(test_name: str, run_case: Callable[[Any, int], None], configs: st.SearchStrategy, cases: list,
           record: Failure, settings: Settings) -> Callable[[], None]:
    """The Hypothesis test of ``run_case(config, seed)`` over ``configs`` (explicit ``cases`` first),
    recording the last failing case in ``record``."""
    def check(config, seed):
        try:
            run_case(config, seed)
        except UnsatisfiedAssumption:
            raise  # a rejected example (routing near-ties, a declined config) is no failure
        except BaseException:
            record.case, record.seed = config, seed
            raise

    # Derandomized runs seed from the test's name: one name per (property, architecture).
    check.__name__ = check.__qualname__ = re.sub(r"\W", "_", test_name)
    # The example database's key hashes the test's source, the same for every cell: the name makes
    # it one key per (property, architecture), so a saved failure is replayed where it belongs.
    check._hypothesis_internal_add_digest = check.__name__.encode()
    test = given(config=configs, seed=rng.seeds())(check)
    for case in reversed(cases):
        test = example(config=case, seed=0)(test)
    return settings(test)


def run(name: str, converter, *, settings: Settings | None = None, save_failures: bool = False,
        note: str = "", directory=None) -> None:
    """Run one property for one converter; on failure optionally save the minimal case to
    ``directory`` (default ``tests/regressions/``; the path is added to the exception's notes),
    then re-raise."""
    failure = Failure()
    test = hypothesis_test(name, converter, settings=settings, failure=failure)
    rng.register_torch_rng()
    try:
        test()
    except BaseException as exc:
        if save_failures and failure.case is not None:
            data = failure.regression(PROPERTIES[name], converter.model_type, note)
            path = save_regression(data["architecture"], data["property"], native_config=data.get("native_config"),
                                   hf_config=data.get("hf_config"), seed=data["seed"], note=note,
                                   directory=directory)
            if hasattr(exc, "add_note"):
                exc.add_note(f"saved as {path}; replay with: convcheck replay {path}")
        raise


def replay(case: Regression, converter=None) -> None:
    """Re-run one saved case (raises the property's violation when it still fails)."""
    if case.adapter is not None:
        return replay_adapter(case, converter)
    prop = PROPERTIES.get(case.property)
    if prop is None:
        raise KeyError(f"{case.id}: unknown property {case.property!r} (known: {sorted(PROPERTIES)})")
    converter = converter or converters.get(case.architecture)
    rng.TorchGlobalRandom().seed(0)  # as Hypothesis seeds it before each example
    prop.check(converter, case.config(), case.seed or 0)


# ------------------------------------------------------------------------------------- adapters
def adapter_hypothesis_test(name: str, adapter, model_type: str, *, settings: Settings | None = None,
                            examples: bool = True, failure: Failure | None = None) -> Callable[[], None]:
    """A zero-argument Hypothesis test of adapter law ``name`` (properties.adapter_laws) for one
    ``model_type`` of ``adapter``: HF configs from ``strategies.<model_type>.hf_configs()``, the
    architecture's ``hf_examples()`` first. A config the adapter declines is coverage, not failure."""
    from converters.adapters import adapter_name

    from . import adapter_laws

    if name not in adapter_laws.ADAPTER_LAWS:
        raise KeyError(f"unknown adapter law {name!r} (known: {', '.join(adapter_laws.ADAPTER_LAWS)})")
    module = strategy_module(model_type)

    def run_case(config, seed):
        if not adapter_laws.check(name, adapter, config, seed):
            reject()  # declined (counted in COVERAGE): draw another, so the budget goes to checked configs

    cases = list(getattr(module, "hf_examples", lambda: [])()) if examples else []
    if name != "hf_config_roundtrip":  # the tensor laws build models: real sizes only as configs
        cases = [c for c in cases if _hf_parameters(c) <= MAX_EXAMPLE_PARAMETERS]
    chosen = settings or profiles.settings_for(name)
    # an adapter may decline most drawn configs (its format's subset): that filtering is expected
    chosen = Settings(chosen, suppress_health_check=[*chosen.suppress_health_check, HealthCheck.filter_too_much,
                                                     HealthCheck.too_slow])
    return _given(f"{name}__{adapter_name(adapter)}__{model_type}", run_case,
                  config_strategy(PROPERTIES["hf_config_roundtrip"], module), cases,
                  failure if failure is not None else Failure(), chosen)


def _hf_parameters(hf: dict) -> int:
    """Parameters of transformers' model of ``hf``, counted on the meta device (no memory)."""
    import torch

    from . import adapter_laws, common

    try:
        config = common.hf_config(adapter_laws.buildable(hf))
        with torch.device("meta"), common.quiet_transformers():
            model = common.causal_lm_class(config)._from_config(config)
    except Exception:  # noqa: BLE001  (a config transformers cannot build is the laws' to report)
        return 0
    return sum(p.numel() for p in model.parameters())


def run_adapter(name: str, adapter, model_type: str, *, settings: Settings | None = None,
                save_failures: bool = False, note: str = "", directory=None, spec: str | None = None) -> None:
    """:func:`run` for an adapter law: on failure optionally save the minimal case for ``convcheck
    replay``, naming ``spec`` (the ``--adapter`` value that loads the adapter again)."""
    from converters.adapters import adapter_name

    failure = Failure()
    rng.register_torch_rng()
    try:
        adapter_hypothesis_test(name, adapter, model_type, settings=settings, failure=failure)()
    except BaseException as exc:
        if save_failures and failure.case is not None:
            path = save_regression(model_type, name, hf_config=failure.case, seed=failure.seed, note=note,
                                   directory=directory, adapter=spec or adapter_name(adapter))
            if hasattr(exc, "add_note"):
                exc.add_note(f"saved as {path}; replay with: convcheck replay {path}")
        raise


def load_adapters(spec: str) -> dict[str, Any]:
    """``{model_type: adapter}`` for ``--adapter spec`` (converters.adapters.load); a model_type
    claimed by two adapters of the list is an error."""
    from converters import adapters

    out: dict[str, Any] = {}
    for adapter in adapters.load(spec):
        for model_type in adapter.model_types:
            if model_type in out:
                raise ValueError(f"--adapter {spec!r}: model_type {model_type!r} is claimed twice")
            out[model_type] = adapter
    return out


def replay_adapter(case: Regression, adapter=None) -> None:
    """Re-run one saved adapter case (raises the law's violation when it still fails)."""
    from . import adapter_laws

    if case.property not in adapter_laws.ADAPTER_LAWS:
        raise KeyError(f"{case.id}: unknown adapter law {case.property!r} (known: {sorted(adapter_laws.ADAPTER_LAWS)})")
    adapter = adapter or load_adapters(case.adapter)[case.architecture]
    rng.TorchGlobalRandom().seed(0)
    adapter_laws.check(case.property, adapter, case.config(), case.seed or 0)
