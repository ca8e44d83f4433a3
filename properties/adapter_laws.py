"""The laws over an adapter (converters.adapters): everything that can be stated on the HF side.

Each law is ``law(adapter, hf, seed=0)``: ``hf`` is an HF config dict drawn by
``strategies.<model_type>.hf_configs()`` (no per-framework strategies), ``seed`` drives every tensor
and choice. The HF source checkpoint is drawn on the HF side, in the form ``save_pretrained`` writes
(tied weights dropped, MoE experts per expert), with random non-default values for every tensor,
norms and biases included. A config the adapter cannot express (:class:`NotRepresentable` from
``import_config``) is coverage: counted in :data:`COVERAGE` and passed, never a failure; any other
exception is a failure.

Our own converters are adapters (native is their foreign format), so these laws run over them too,
beside the native-side properties of this package (which draw native configs).
"""
from __future__ import annotations

import collections
import math
from typing import Any, Callable, Mapping

import torch

from converters import ConversionError
from converters.adapters import NotRepresentable, adapter_name, as_mapping
from fixtures import tolerances

from . import common
from .common import CountingMapping, bits_equal, clone_state, describe_difference
from .config import dict_difference, normalize
from .forward import attentions
from .violation import PropertyViolation, Reporter

#: ``{(adapter, model_type): Counter(field)}``: HF configs an adapter refused as not representable
COVERAGE: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
BATCH = 2
MAX_SEQ_LEN = 256
#: a bias or head change smaller than this in the logits counts as no change
CHANGED = 1e-9


class AdapterReporter(Reporter):
    def __init__(self, property: str, adapter: Any, hf: Mapping[str, Any]):
        self.property = property
        self.architecture = f"{adapter_name(adapter)}:{hf.get('model_type')}"


class Covered(Exception):
    """Raised inside a law when the config has nothing to check (the adapter declined it, or
    transformers cannot run it): the law holds vacuously; :func:`check` counts ``field``."""

    def __init__(self, field: str, reason: str = ""):
        self.field = field
        super().__init__(f"{field}: {reason}" if reason else field)


def foreign_config(report: Reporter, adapter: Any, hf: Mapping[str, Any]) -> Any:
    """``adapter.import_config(hf)``; a :class:`NotRepresentable` is recorded and ends the law."""
    try:
        return adapter.import_config(dict(hf))
    except NotRepresentable as exc:
        raise Covered(exc.field, exc.reason) from None
    except Exception as exc:  # noqa: BLE001  (a crash of the code under test is the finding)
        detail = (f"raised {type(exc).__name__} instead of importing or declining (NotRepresentable): {exc} "
                  f"(at {_where(exc)})")
        raise PropertyViolation(report.property, report.architecture, "import_config", detail) from None


def _hypothesis_event(text: str) -> None:
    try:
        from hypothesis import event
        event(text)
    except Exception:  # noqa: BLE001  (outside a Hypothesis test there is nothing to record)
        pass


def _call(report: Reporter, what: str, function: Callable, *args) -> Any:
    try:
        return function(*args)
    except (PropertyViolation, Covered):
        raise
    except Exception as exc:  # noqa: BLE001  (a crash of the code under test is the finding)
        detail = f"raised {type(exc).__name__}: {exc} (at {_where(exc)})"
        raise PropertyViolation(report.property, report.architecture, what, detail) from None  # the law heads the report


def _where(exc: BaseException) -> str:
    """``file:line`` of the frame that raised: the crash's place, while the headline stays the law's."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{'/'.join(frame.filename.split('/')[-3:])}:{frame.lineno}"


def buildable(hf: Mapping[str, Any]) -> dict[str, Any]:
    """``hf`` for building a tiny model: without ``quantization_config`` (the file's weights would
    be quantized by a pipeline; the drawn tensors are plain, and transformers would ask for the
    quantization libraries)."""
    return {k: v for k, v in hf.items() if k != "quantization_config"}


#: the COVERAGE field of configs transformers itself cannot build or run (e.g. MixtralConfig with
#: ``head_dim: null`` and yarn rope in 5.23): no reference, so no law to check
NO_REFERENCE = "(transformers cannot run its own model of this config)"


def reference_runs(build: Callable[[], Any]) -> Any:
    """``build()``, a step of transformers' own model of the *source* config; when transformers
    itself fails, the config has no reference: counted under :data:`NO_REFERENCE`, law vacuous."""
    try:
        return build()
    except (PropertyViolation, Covered):
        raise
    except Exception as exc:  # noqa: BLE001
        raise Covered(NO_REFERENCE, f"{type(exc).__name__}: {exc}") from None


def hf_source(hf: Mapping[str, Any], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A random HF checkpoint of ``hf`` as ``save_pretrained`` writes it: matrices N(0, 1/fan_in),
    norm gains 1 + 0.1 N, other vectors (biases) 0.1 N, drawn in float64 and cast to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    shapes = reference_runs(lambda: common.hf_disk_shapes(buildable(hf), dtype))
    for name, (shape, _) in sorted(shapes.items()):
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        if len(shape) >= 2:
            x = x / math.sqrt(shape[-1])
        elif "norm" in name:
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        out[name] = x.to(dtype)
    return out


def _same(report: Reporter, expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor], what: str) -> None:
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    report.expect(not missing, missing[0] if missing else "", f"{what}: tensor(s) missing: {missing[:6]}")
    report.expect(not extra, extra[0] if extra else "", f"{what}: unexpected tensor(s): {extra[:6]}")
    for name, tensor in expected.items():
        if not bits_equal(tensor, actual[name]):
            report.fail(name, f"{what} is not bit-exact: {describe_difference(tensor, actual[name])}")


def _import_weights(report, adapter, foreign, hf_state) -> dict[str, torch.Tensor]:
    return _call(report, "import_weights", lambda: as_mapping(adapter.import_weights(foreign, hf_state), "import_weights"))


def _export_weights(report, adapter, foreign, state) -> dict[str, torch.Tensor]:
    return _call(report, "export_weights", lambda: as_mapping(adapter.export_weights(foreign, state), "export_weights"))


def _export_config(report, adapter, foreign) -> dict[str, Any]:
    return _call(report, "export_config", adapter.export_config, foreign)


# ----------------------------------------------------------------------------------------- laws
def hf_config_roundtrip(adapter, hf: Mapping[str, Any], seed: int = 0) -> None:
    """``normalize(export_config(import_config(h))) == normalize(h)``."""
    report = AdapterReporter("hf_config_roundtrip", adapter, hf)
    foreign = foreign_config(report, adapter, hf)
    out = _export_config(report, adapter, foreign)
    diffs = dict_difference(normalize(hf), _call(report, "export_config", normalize, out))
    if diffs:
        report.fail(diffs[0].split(":")[0], "normalize(export(import(h))) != normalize(h): " + "; ".join(diffs[:6]))


def weight_roundtrip(adapter, hf: Mapping[str, Any], seed: int = 0) -> None:
    """HF → foreign → HF returns the source bytes (names, shapes, dtypes, bits) in the dtype drawn
    from the seed (float32, bfloat16, float16, float64); each HF tensor is read exactly once; neither
    direction mutates its input."""
    report = AdapterReporter("weight_roundtrip", adapter, hf)
    foreign = foreign_config(report, adapter, hf)
    dtype = common.weight_dtype(seed)
    source = hf_source(hf, seed, dtype)
    before = clone_state(source)
    counting = CountingMapping(source)
    state = _import_weights(report, adapter, foreign, counting)
    for name in source:
        reads = counting.reads.get(name, 0)
        report.expect(reads == 1, name, f"import_weights read this HF tensor {reads} times (expected once)")
    _same(report, before, source, "import_weights mutated its input")
    state_before = clone_state(state)
    back = _export_weights(report, adapter, foreign, state)
    _same(report, state_before, state, "export_weights mutated its input")
    _same(report, before, back, "HF -> foreign -> HF")


def key_bijection(adapter, hf: Mapping[str, Any], seed: int = 0) -> None:
    """The export holds exactly the names, shapes and dtypes transformers saves for the *exported*
    config, and transformers loads it with no missing, unexpected or mis-shaped tensor."""
    report = AdapterReporter("key_bijection", adapter, hf)
    foreign = foreign_config(report, adapter, hf)
    dtype = common.weight_dtype(seed)
    state = _import_weights(report, adapter, foreign, hf_source(hf, seed, dtype))
    exported = _export_weights(report, adapter, foreign, state)
    hf_out = _export_config(report, adapter, foreign)
    expected = common.hf_disk_shapes(buildable(hf_out), dtype)
    missing, extra = sorted(set(expected) - set(exported)), sorted(set(exported) - set(expected))
    report.expect(not missing, missing[0] if missing else "", f"transformers' checkpoint has tensor(s) the export lacks: {missing[:6]}")
    report.expect(not extra, extra[0] if extra else "", f"exported tensor(s) transformers' checkpoint does not have: {extra[:6]}")
    for name, tensor in exported.items():
        shape, hf_dtype = expected[name]
        report.expect(tuple(tensor.shape) == shape, name, f"exported shape {tuple(tensor.shape)}, transformers expects {shape}")
        report.expect(tensor.dtype == hf_dtype, name, f"exported dtype {tensor.dtype}, transformers expects {hf_dtype}")
    common.hf_model(report, buildable(hf_out), exported, torch.float32)


def tied_embeddings(adapter, hf: Mapping[str, Any], seed: int = 0) -> None:
    """For the drawn config and its tie-flipped twin (when the adapter takes it): the exported
    config ties exactly when the source does, ``lm_head`` is exported exactly when untied; and
    "train the head, export, reload": when the foreign state holds the embedding twice (a head
    that training can move apart), changing either copy and exporting gives a checkpoint that
    transformers loads as that same foreign state — or the export refuses, naming the head. A
    tied export that drops (or ships but HF ignores) a changed head is the silent bug."""
    report = AdapterReporter("tied_embeddings", adapter, hf)
    tied = bool(common.hf_config(hf).tie_word_embeddings)
    for variant_tied in (tied, not tied):
        variant = {**hf, "tie_word_embeddings": variant_tied}
        if variant_tied == tied:
            foreign = foreign_config(report, adapter, variant)
        else:  # the twin: a format with one tie setting may decline it, loudly or as NotRepresentable
            try:
                foreign = adapter.import_config(dict(variant))
            except NotRepresentable:
                continue
            except ConversionError as exc:
                report.expect("tie" in str(exc), "tie_word_embeddings",
                              f"the refusal of tie_word_embeddings={variant_tied} does not name it: {exc}")
                continue
        _tied_cell(report, adapter, variant, foreign, variant_tied, seed)


def _tied_cell(report: Reporter, adapter, hf, foreign, tied: bool, seed: int) -> None:
    from .weights import embedding_names

    label = "tied" if tied else "untied"
    hf_out = _export_config(report, adapter, foreign)
    report.expect(bool(common.hf_config(hf_out).tie_word_embeddings) == tied, "tie_word_embeddings",
                  f"the source is {label} but the exported config says tie_word_embeddings="
                  f"{common.hf_config(hf_out).tie_word_embeddings}")
    source = hf_source(hf, seed, torch.float32)
    embedding, head = embedding_names(hf)
    state = _import_weights(report, adapter, foreign, source)
    exported = _export_weights(report, adapter, foreign, state)
    report.expect((head in exported) != tied, head,
                  f"{'exported' if tied else 'not exported'} for a {label} model")
    if not tied:
        return
    copies = [n for n, t in state.items() if bits_equal(t, source[embedding]) and t.shape == source[embedding].shape]
    if len(copies) < 2:
        return  # one tensor in the foreign state: nothing training could move apart
    generator = torch.Generator().manual_seed(seed + 7)
    for name in copies:
        trained = dict(state)
        trained[name] = state[name] + 0.5 * torch.randn(state[name].shape, generator=generator).to(state[name].dtype)
        try:
            out_cfg = adapter.export_config(foreign)
            out = as_mapping(adapter.export_weights(foreign, trained), "export_weights")
        except (ConversionError, NotRepresentable) as exc:
            report.expect(head in str(exc) or "tie" in str(exc) or "lm_head" in str(exc), name,
                          f"the export refused a trained, untied head without naming it: {exc}")
            continue
        loaded = _as_transformers_saves(report, out_cfg, out)
        again = _import_weights(report, adapter, foreign if out_cfg == hf_out else
                                foreign_config(report, adapter, out_cfg), loaded)
        changed = [n for n in trained if n in again and not bits_equal(trained[n], again[n])]
        report.expect(not changed and set(again) == set(trained), name,
                      f"the foreign state held the embedding twice; after training {name} the export "
                      f"(tie_word_embeddings={common.hf_config(out_cfg).tie_word_embeddings}, "
                      f"{head} {'written' if head in out else 'not written'}) is loaded by transformers as a "
                      f"different model: {changed[:3] or sorted(set(again) ^ set(trained))[:3]} differ")


def _as_transformers_saves(report: Reporter, hf_cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What transformers holds after loading ``tensors`` with ``hf_cfg``, saved again: ties applied,
    tensors it ignores gone."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    model = common.hf_model(_Lenient(report), buildable(hf_cfg), tensors, torch.float32)
    state = remove_tied_weights_from_state_dict(dict(model.state_dict()), model)
    return {n: t.detach().clone() for n, t in revert_weight_conversion(model, state).items()}


class _Lenient(Reporter):
    """Loading a checkpoint whose extra head transformers ignores is the case under test."""

    def __init__(self, report: Reporter):
        self.property, self.architecture = report.property, report.architecture

    def fail(self, where: str, detail: str):
        if "unexpected keys" in detail:
            return None
        return super().fail(where, detail)


def bias_handling(adapter, hf: Mapping[str, Any], seed: int = 0) -> None:
    """Every bias transformers' model has for the config comes back bit-exact (named when lost);
    with ``forward``, biases scaled up tenfold still give HF's logits (a framework that loads a bias
    but does not add it, or adds it in the wrong place, shows here)."""
    report = AdapterReporter("bias_handling", adapter, hf)
    foreign = foreign_config(report, adapter, hf)
    source = hf_source(hf, seed, torch.float64)
    biases = [n for n in source if n.endswith("bias")]
    if not biases:
        return
    state = _import_weights(report, adapter, foreign, source)
    back = _export_weights(report, adapter, foreign, state)
    for name in biases:
        report.expect(name in back, name, "bias lost between HF and the foreign format")
        report.expect(bits_equal(back[name], source[name]), name,
                      f"bias changed between HF and the foreign format: {describe_difference(source[name], back[name])}")
    if getattr(adapter, "forward", None) is None:
        return
    loud = {n: (t * 10 if n in biases else t) for n, t in source.items()}
    _compare_logits(report, adapter, hf, foreign, loud, seed, torch.float64, "eager", "biases x10")


def forward_equivalence(adapter, hf: Mapping[str, Any], seed: int = 0) -> None:
    """With ``forward``: the foreign model's logits equal HF's on the same random weights, in
    float64 and float32 (tolerances from fixtures.tolerances), against HF's eager and sdpa
    attention, and (dense models) in bfloat16 and float16 within the tolerance derived from HF's
    own error in that dtype, on a sequence long enough to pass the sliding window and the rope's original
    context. Adapters without ``forward`` pass (there is no foreign model to run)."""
    report = AdapterReporter("forward_equivalence", adapter, hf)
    foreign = foreign_config(report, adapter, hf)
    if getattr(adapter, "forward", None) is None:
        _hypothesis_event("no forward")
        return
    for dtype in (torch.float64, torch.float32):
        source = hf_source(hf, seed, dtype)
        for attention in attentions(buildable(hf)):
            _compare_logits(report, adapter, hf, foreign, source, seed, dtype, attention, "")
    if not _has_experts(hf):  # a routing near-tie flips an expert in reduced precision: dense only
        for dtype in (torch.bfloat16, torch.float16):
            _compare_reduced(report, adapter, hf, foreign, seed, dtype)


def _has_experts(hf: Mapping[str, Any]) -> bool:
    config = common.hf_config(buildable(hf)).to_dict()
    return any(isinstance(config.get(k), int) and config[k] > 0
               for k in ("num_local_experts", "num_experts", "n_routed_experts"))


def _compare_reduced(report, adapter, hf, foreign, seed, dtype) -> None:
    """Reduced precision (fixtures.tolerances.derived_tolerance): with the weights in ``dtype``, the
    foreign model in ``dtype`` is within ``2 × HF's own error in dtype + floor`` of HF in float64."""
    source = hf_source(hf, seed, dtype)
    ids = torch.randint(0, common.hf_config(hf).vocab_size, (BATCH, sequence_length(hf)),
                        generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = reference_runs(lambda: common.hf_model(report, buildable(hf), source, torch.float64)(input_ids=ids).logits)
        hf_low = reference_runs(lambda: common.hf_model(report, buildable(hf), source, dtype)(input_ids=ids).logits)
        ours = _call(report, "forward", adapter.forward, foreign, _import_weights(report, adapter, foreign, source),
                     ids, dtype)
    hf_error = tolerances.relative_error(hf_low, reference)
    error, bound = tolerances.relative_error(ours, reference), tolerances.derived_tolerance(dtype, hf_error)
    report.expect(error <= bound, "logits",
                  f"logits ({tolerances.dtype_name(dtype)}): relative error {error:.3e} to HF float64 vs tolerance "
                  f"{bound:.3e} (HF's own {tolerances.dtype_name(dtype)} error {hf_error:.3e})")


def sequence_length(hf: Mapping[str, Any]) -> int:
    """properties.forward's rule (past every window and original rope context), within
    ``max_position_embeddings``, read through our converter of the model_type (whose strategies
    drew ``hf``: it accepts them all, a law of the property suite)."""
    import converters

    from .forward import sequence_length as native_rule

    return min(native_rule(converters.get(str(hf["model_type"])).import_config(hf), past_context=False), MAX_SEQ_LEN)


def _compare_logits(report, adapter, hf, foreign, source, seed, dtype, attention, label) -> None:
    vocab = common.hf_config(hf).vocab_size
    tokens = sequence_length(hf)
    ids = torch.randint(0, vocab, (BATCH, tokens), generator=torch.Generator().manual_seed(seed))
    state = _import_weights(report, adapter, foreign, source)
    with torch.no_grad():  # the reference first: a config transformers cannot run checks nothing
        theirs = reference_runs(lambda: common.hf_model(report, buildable(hf), source, dtype,
                                                            attention=attention)(input_ids=ids).logits)
        ours = _call(report, "forward", adapter.forward, foreign, state, ids, dtype)
    what = f"logits ({tolerances.dtype_name(dtype)}, HF {attention}{', ' + label if label else ''}, {tokens} tokens)"
    report.expect(tuple(ours.shape) == tuple(theirs.shape), "logits", f"shape {tuple(ours.shape)}, HF {tuple(theirs.shape)}")
    try:
        tolerances.check_close(ours.to(dtype), theirs, dtype, what)
    except AssertionError as exc:
        raise PropertyViolation(report.property, report.architecture, "logits", str(exc)) from None


#: law name -> function, in matrix order
ADAPTER_LAWS: dict[str, Callable[..., None]] = {law.__name__: law for law in (
    hf_config_roundtrip, weight_roundtrip, key_bijection, tied_embeddings, bias_handling, forward_equivalence)}


def check(name: str, adapter, hf: Mapping[str, Any], seed: int = 0) -> bool:
    """Run law ``name``; ``False`` when the adapter declined the config (coverage), ``True`` when
    the law held; a broken law raises :class:`PropertyViolation`."""
    try:
        ADAPTER_LAWS[name](adapter, hf, seed)
    except Covered as covered:
        COVERAGE[(adapter_name(adapter), str(hf.get("model_type")))][covered.field] += 1
        _hypothesis_event(f"not representable: {covered.field}")
        return False
    return True
