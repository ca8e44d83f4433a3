"""The one harness of the per-architecture converter tests. A test file holds data (its converter,
named native forward cases, HF example configs, the configs it must refuse) and installs the shared
tests with ``globals().update(standard_tests(...))``; what differs between architectures is an
option of :func:`standard_tests`:

- ``on_disk``: transformers reads the exported checkpoint from a directory with ``from_pretrained``,
  the path on which MoE models turn per-expert tensors into their fused layout;
- ``exact_hf``: a context in which transformers computes in float64 what it otherwise rounds to
  float32 (``converters.hf_reference.exact_float64``: Gemma's norms, rotary tables); HF's error is then measured per case and
  becomes the tolerance's baseline, and float32 can be compared too;
- ``redraw``: how the HF source of the weight round trip is redrawn (:func:`small_norms`);
- ``structures``/``saved``: the per-layer structure transformers builds from HF dicts, and a
  ``save_pretrained`` checkpoint's bit-exact round trip.

Config dicts are compared through ``properties.normalize`` (the gate's own), forward inputs are
:func:`forward_length` long (``strategies.building_blocks.min_forward_length`` plus three, at least
16 tokens), and forward bounds come from ``fixtures.tolerances``. (The laws over *drawn* configs are
the gate's, tests/test_properties.py; they are not re-run here.)
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytest
import torch

import native
from checkpoints.hf_reader import open_hf_checkpoint
from checkpoints.hf_writer import write_hf_checkpoint
from converters import ConversionError
from fixtures.tolerances import HAND_WRITTEN_FLOAT64, Comparison, compare, relative_error, tolerance_for
from properties import normalize
from properties.common import (
    HF_IMPLEMENTATION, bits_equal, causal_lm_class, describe_difference, hf_config, hf_model, jsonable,
    native_model, quiet_transformers, without_metadata,
)
from properties.violation import Reporter
from strategies.building_blocks import min_forward_length


# ---------------------------------------------------------------------------------------- configs
def assert_hf_roundtrip(converter, hf: Mapping[str, Any]) -> native.ModelConfig:
    """import → export equals the input as transformers reads both; the import is a fixed point, the
    input is not mutated, every architecture field is claimed."""
    original = copy.deepcopy(dict(hf))
    cfg = converter.import_config(hf)
    assert dict(hf) == original, "import_config mutated its input"
    exported = converter.export_config(cfg)
    a, b = normalize(exported), normalize(hf)
    diff = {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    assert not diff, f"export(import(h)) differs from h (exported, original): {diff}"
    assert converter.import_config(exported) == cfg
    assert not converter.unclaimed_fields(cfg)
    return cfg


def attribute(obj: Any, dotted: str) -> Any:
    """``obj.a.b`` for ``"a.b"``, through attributes or dict keys."""
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
    return obj


def assert_class_defaults(converter, hf: Mapping[str, Any], fields: Mapping[str, str]) -> native.ModelConfig:
    """A key absent from an HF dict means the default of the architecture's transformers config
    class. ``fields`` maps native paths (from the config; ``layer0.`` for the first layer's block) to
    the class attributes whose keys are left out of ``hf``: the import holds the class's values there,
    and equals the import of the dict the class fills in."""
    hf = {k: v for k, v in hf.items() if k not in {name.split(".")[0] for name in fields.values()}}
    cfg = converter.import_config(hf)
    reference = hf_config(hf)
    assert without_metadata(cfg) == without_metadata(converter.import_config(jsonable(reference.to_dict())))
    root = {"cfg": cfg, "layer0": cfg.decoder.layer(0)}
    for path, name in fields.items():
        assert attribute(root, path) == attribute(reference, name), f"{path} != {type(reference).__name__}.{name}"
    return cfg


def assert_native_roundtrip(converter, cfg: native.ModelConfig) -> dict[str, Any]:
    """import(export(cfg)) == cfg through JSON; transformers' config class builds the export."""
    hf = converter.export_config(cfg)
    assert converter.import_config(json.loads(json.dumps(hf))) == cfg
    assert not converter.unclaimed_fields(cfg)
    normalize(hf)
    return hf


def _named(error: pytest.ExceptionInfo, fragments: Sequence[str]) -> str:
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in refusal message {message!r}"
    return message


def refusal(converter, cfg: native.ModelConfig, *fragments: str) -> str:
    """export_config refuses ``cfg`` with a message containing every fragment (the field)."""
    with pytest.raises(ConversionError) as info:
        converter.export_config(cfg)
    return _named(info, fragments)


def import_refusal(converter, hf: Mapping[str, Any], *fragments: str) -> str:
    """import_config refuses ``hf`` with a message containing every fragment (the key)."""
    with pytest.raises(ConversionError) as info:
        converter.import_config(hf)
    return _named(info, fragments)


def with_layers(cfg: native.ModelConfig,
                fn: Callable[[int, native.BlockConfig], native.BlockConfig]) -> native.ModelConfig:
    """``cfg`` with layer ``i`` replaced by ``fn(i, layer)``."""
    layers = [fn(i, b) for i, b in enumerate(cfg.decoder.layers())]
    return dataclasses.replace(cfg, decoder=native.DecoderConfig.from_layers(layers))


def with_layer(cfg: native.ModelConfig, index: int | None = None, **changes) -> native.ModelConfig:
    """``cfg`` with the fields ``changes`` of one layer's block (every layer when ``index`` is None)."""
    return with_layers(cfg, lambda i, b: dataclasses.replace(b, **changes) if index in (None, i) else b)


def with_attention(cfg: native.ModelConfig, index: int | None = None, **changes) -> native.ModelConfig:
    """``cfg`` with the attention fields ``changes`` of one layer (every layer when ``index`` is None)."""
    return with_layers(cfg, lambda i, b: attention(b, **changes) if index in (None, i) else b)


def with_mlp(cfg: native.ModelConfig, index: int | None = None, **changes) -> native.ModelConfig:
    """``cfg`` with the MLP fields ``changes`` of one layer (every layer when ``index`` is None)."""
    return with_layers(cfg, lambda i, b: dataclasses.replace(b, mlp=dataclasses.replace(b.mlp, **changes))
                       if index in (None, i) else b)


def attention(block: native.BlockConfig, **changes) -> native.BlockConfig:
    return dataclasses.replace(block, attention=dataclasses.replace(block.attention, **changes))


# ---------------------------------------------------------------------------------------- forward
#: The shortest forward input: 16 tokens a row route enough tokens through every MoE layer to reach
#: most experts, and give attention more than a handful of keys.
MIN_FORWARD_TOKENS = 16


def forward_length(cfg: native.ModelConfig) -> int:
    """Three tokens past every window and every original context, and at least
    :data:`MIN_FORWARD_TOKENS` (the one length rule of the forward cases)."""
    return max(min_forward_length(cfg) + 3, MIN_FORWARD_TOKENS)


def padded_batch(cfg: native.ModelConfig, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of random tokens; row 1 has padding keys: a hole after its first token, shorter than
    every sliding window, so that no query row is fully masked. (transformers' float64 eager
    attention adds ``finfo(float64).min``, which its float32 softmax turns into ``-inf``: a fully
    masked row becomes NaN, and ``probs @ v`` then spreads it to every position of the next layer.)
    With a window of 1 no padding is possible, and row 1 is unpadded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    windows = [b.attention.window for b in cfg.decoder.blocks if getattr(b.attention, "window", None) is not None]
    hole = min([2, length - 2] + [w - 1 for w in windows])
    if hole > 0:
        mask[1, 1:1 + hole] = 0
    return ids, mask


def hf_logits(converter, cfg: native.ModelConfig, state: Mapping[str, torch.Tensor], ids, mask,
              dtype: torch.dtype = torch.float64, *, on_disk: bool = False) -> torch.Tensor:
    """The logits of transformers' model of the exported config and weights: given the state dict in
    memory, or (``on_disk``) reading the checkpoint ``convcheck`` writes with ``from_pretrained``."""
    hf = converter.export_config(cfg)
    hf_state = converter.export_weights(cfg, state)
    if on_disk:
        with tempfile.TemporaryDirectory() as tmp, quiet_transformers():
            write_hf_checkpoint(Path(tmp) / "hf", hf, hf_state)
            model, info = causal_lm_class(hf_config(hf)).from_pretrained(
                Path(tmp) / "hf", dtype=dtype, output_loading_info=True, local_files_only=True, **HF_IMPLEMENTATION)
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"from_pretrained: {problems}"
        model.eval()
    else:
        model = hf_model(Reporter("forward_equivalence", converter), hf, dict(hf_state), dtype)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def native_logits(cfg: native.ModelConfig, state: Mapping[str, torch.Tensor], ids, mask,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    with torch.no_grad():
        return native_model(cfg, state, dtype)(ids, mask)


@dataclasses.dataclass(frozen=True)
class ForwardResult:
    """A forward comparison; ``bound`` is the hand-written cases' float64 bound where the tolerance's
    baseline is the static one (a measured baseline is the bound itself)."""

    comparison: Comparison
    length: int
    bound: float

    @property
    def ok(self) -> bool:
        return self.comparison.ok and self.comparison.error < self.bound

    def describe(self) -> str:
        return f"T={self.length} bound={self.bound:.1e}: {self.comparison.describe()}"


def forward_check(converter, cfg: native.ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float64,
                  length: int | None = None, exact_hf: Callable[[], contextlib.AbstractContextManager] | None = None,
                  on_disk: bool = False) -> ForwardResult:
    """Native logits vs the HF model's, same random weights, on :func:`padded_batch` of
    :func:`forward_length`. Without ``exact_hf``: float64, the static float64 tolerance and
    ``HAND_WRITTEN_FLOAT64``. With it, HF's own error is measured against HF run under ``exact_hf`` on
    the same weights in float64: in float64 it is added to the static baseline bound (which covers
    HF's other float32 steps, rotary tables and softmax), in float32 it is the baseline."""
    state = native.random_state(cfg, seed, dtype=dtype)
    length = length or forward_length(cfg)
    ids, mask = padded_batch(cfg, length, seed)
    theirs = hf_logits(converter, cfg, state, ids, mask, dtype, on_disk=on_disk)
    ours = native_logits(cfg, state, ids, mask, dtype)
    if exact_hf is None:
        assert dtype == torch.float64, "without a measured baseline only float64 has a hand-written bound"
        return ForwardResult(compare(ours, theirs, dtype, mask=mask.bool()), length, HAND_WRITTEN_FLOAT64)
    wide = {k: v.to(torch.float64) for k, v in state.items()}
    with exact_hf():
        exact = hf_logits(converter, cfg, wide, ids, mask, torch.float64, on_disk=on_disk)
    measured = relative_error(theirs, exact, mask.bool())
    baseline = tolerance_for(dtype).baseline_bound + measured if dtype == torch.float64 else measured
    return ForwardResult(compare(ours, theirs, dtype, mask=mask.bool(), baseline=baseline), length, float("inf"))


# ---------------------------------------------------------------------------------------- weights
def hf_disk_state(hf: Mapping[str, Any], seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random checkpoint in the on-disk names ``save_pretrained`` writes for this config (tied
    weights dropped, transformers' conversion mapping reverted), every tensor random."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    config = hf_config(hf)
    with quiet_transformers(), torch.device("meta"):
        model = causal_lm_class(config)._from_config(config, dtype=dtype, attn_implementation="eager")
    state = remove_tied_weights_from_state_dict(dict(model.state_dict()), model)
    state = revert_weight_conversion(model, state)
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tuple(t.shape), generator=g, dtype=torch.float32).to(dtype) for name, t in state.items()}


def small_norms(state: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """An HF state with every norm weight ``w`` redrawn small (std 0.05, as real Gemma checkpoints
    have their zero-centred gains), the other tensors kept: values where ``1 + w`` would round in
    every dtype, so only a converter that keeps ``w`` as it is round-trips them."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if name.endswith("norm.weight") or "layernorm" in name:
            t = (0.05 * torch.randn(t.shape, generator=g, dtype=torch.float32)).to(t.dtype)
        out[name] = t
    return out


def assert_bitwise_equal(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: names differ {sorted(set(actual) ^ set(expected))}"
    for name, tensor in expected.items():
        assert bits_equal(actual[name], tensor), f"{what}: {name}: {describe_difference(actual[name], tensor)}"


def assert_no_shared_storage(outputs: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> None:
    pointers = {t.untyped_storage().data_ptr() for t in inputs.values()}
    shared = [name for name, t in outputs.items() if t.untyped_storage().data_ptr() in pointers]
    assert not shared, f"outputs share storage with the input: {shared[:4]}"


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def assert_weights_roundtrip(converter, cfg: native.ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                             redraw: Callable[[dict, int], dict] | None = None) -> None:
    """native → HF → native and HF → native → HF bit-exact. The export has the names and shapes of
    the HF model's checkpoint (``save_pretrained``'s, :func:`hf_disk_state`) and of ``hf_shapes``;
    the import those of the native layout; inputs are not mutated and outputs own their storage."""
    state = native.random_state(cfg, seed, dtype=dtype)
    saved = {k: v.clone() for k, v in state.items()}
    exported = dict(converter.export_weights(cfg, state))
    assert_bitwise_equal(state, saved, "export mutated its input")
    assert_no_shared_storage(exported, state)
    assert shapes(exported) == converter.hf_shapes(cfg)
    assert_bitwise_equal(dict(converter.import_weights(cfg, exported)), state, "native -> HF -> native")

    source = hf_disk_state(converter.export_config(cfg), seed, dtype)
    if redraw is not None:
        source = redraw(source, seed)
    assert shapes(exported) == shapes(source), "the export's names and shapes are not the HF model's"
    ours = dict(converter.import_weights(cfg, source))
    assert shapes(ours) == native.state_shapes(cfg), f"native names {sorted(set(ours) ^ set(native.state_shapes(cfg)))}"
    assert_no_shared_storage(ours, source)
    back = dict(converter.export_weights(cfg, ours))
    assert_bitwise_equal(back, source, "HF -> native -> HF")
    assert_no_shared_storage(back, source)


def save_pretrained_roundtrip(converter, hf: Mapping[str, Any], tmp_path: Path, seed: int = 0) -> native.ModelConfig:
    """A tiny HF model built by transformers and written by ``save_pretrained`` → import (config and
    weights) → export: the same config (normalised) and every tensor bit-exact, by name."""
    config = hf_config(hf)
    torch.manual_seed(seed)
    with quiet_transformers():
        model = causal_lm_class(config)._from_config(config, **HF_IMPLEMENTATION)
    with torch.no_grad():  # every tensor random (norms and routers included), so a swap shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    model.save_pretrained(tmp_path / "saved")
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    with open_hf_checkpoint(tmp_path / "saved") as reader:
        cfg = converter.import_config(saved_config)
        source = {name: reader[name] for name in reader.keys()}
    exported = dict(converter.export_weights(cfg, dict(converter.import_weights(cfg, source))))
    assert_bitwise_equal(exported, source, "save_pretrained -> native -> HF")
    assert normalize(converter.export_config(cfg)) == normalize(saved_config)
    return cfg


# ------------------------------------------------------------------------------------- structure
def hf_structure(hf: Mapping[str, Any]) -> list[tuple[bool, bool]]:
    """Per layer ``(sparse, sliding)`` as transformers builds the model from this config: the
    reference for the converters' reading of ``decoder_sparse_step``/``mlp_only_layers``/``layer_types``."""
    config = hf_config(hf)
    with quiet_transformers(), torch.device("meta"):
        model = causal_lm_class(config)._from_config(config)
    layer_types = getattr(config, "layer_types", None)
    sliding_all = getattr(config, "sliding_window", None) is not None and layer_types is None
    return [(hasattr(layer.mlp, "experts"),
             sliding_all or (layer_types is not None and layer_types[i] == "sliding_attention"))
            for i, layer in enumerate(model.model.layers)]


def native_structure(cfg: native.ModelConfig) -> list[tuple[bool, bool]]:
    return [(isinstance(b.mlp, (native.MoEConfig, native.DeepSeekMoEConfig)),
             getattr(b.attention, "window", None) is not None) for b in cfg.decoder.layers()]


# ------------------------------------------------------------------------------------------ tests
def standard_tests(converter, forward_cases: Mapping[str, native.ModelConfig], *, hf_examples: Sequence[dict] = (),
                   example_ids: Sequence[str] | None = None,
                   check_example: Callable[[native.ModelConfig], None] | None = None,
                   refusals: Sequence[tuple[str, native.ModelConfig]] = (),
                   hf_refusals: Sequence[tuple[str, dict]] = (), weight_seed: int = 0,
                   dtypes: Sequence[torch.dtype] = (torch.float64,), exact_hf=None, on_disk: bool = False,
                   redraw: Callable[[dict, int], dict] | None = None, structures: Mapping[str, dict] | None = None,
                   saved: Mapping[str, Any] | None = None,
                   class_defaults: tuple[dict, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """The tests every per-architecture file shares, built from its data alone:

    - ``hf_examples``: each round trips HF → native → HF (and passes ``check_example``);
    - ``forward_cases``: each round trips native → HF → native, computes HF's logits in each of
      ``dtypes`` (:func:`forward_check` with ``exact_hf`` and ``on_disk``), and its weights round trip
      bit-exactly both ways (random seed ``weight_seed``, HF source redrawn by ``redraw``);
    - ``refusals``: ``(field, cfg)``, ``export_config(cfg)`` refuses naming ``field``;
    - ``hf_refusals``: ``(key, hf)``, ``import_config(hf)`` refuses naming ``key``;
    - ``structures``: ``{name: hf}``, the imported per-layer structure is the one transformers builds;
    - ``saved``: an HF dict whose ``save_pretrained`` checkpoint round trips bit-exactly;
    - ``class_defaults``: ``(hf, fields)``, the keys of ``fields`` left out of ``hf`` take transformers'
      defaults (:func:`assert_class_defaults`).

    A file installs them with ``globals().update(standard_tests(...))``."""
    names = sorted(forward_cases)
    examples = list(hf_examples)
    tests = []

    @pytest.mark.parametrize("name", names)
    def test_forward_case_configs_roundtrip(name):
        assert_native_roundtrip(converter, forward_cases[name])

    @pytest.mark.parametrize("dtype", dtypes, ids=str)
    @pytest.mark.parametrize("name", names)
    def test_forward_matches_transformers(name, dtype):
        result = forward_check(converter, forward_cases[name], dtype=dtype, exact_hf=exact_hf, on_disk=on_disk)
        assert result.ok, result.describe()

    @pytest.mark.parametrize("name", names)
    def test_weights_roundtrip_bit_exact(name):
        assert_weights_roundtrip(converter, forward_cases[name], seed=weight_seed, redraw=redraw)

    tests += [test_forward_case_configs_roundtrip, test_forward_matches_transformers, test_weights_roundtrip_bit_exact]

    if examples:
        @pytest.mark.parametrize("hf", examples, ids=list(example_ids or (f"example{i}" for i in range(len(examples)))))
        def test_example_configs_roundtrip(hf):
            cfg = assert_hf_roundtrip(converter, hf)
            if check_example is not None:
                check_example(cfg)

        tests.append(test_example_configs_roundtrip)

    if refusals:
        @pytest.mark.parametrize("field, cfg", refusals, ids=[field for field, _ in refusals])
        def test_refusals_name_the_field(field, cfg):
            refusal(converter, cfg, field)

        tests.append(test_refusals_name_the_field)

    if hf_refusals:
        @pytest.mark.parametrize("key, hf", hf_refusals, ids=[key for key, _ in hf_refusals])
        def test_hf_refusals_name_the_key(key, hf):
            import_refusal(converter, hf, key)

        tests.append(test_hf_refusals_name_the_key)

    if structures:
        @pytest.mark.parametrize("name", sorted(structures))
        def test_layer_structure_as_transformers_builds_it(name):
            cfg = assert_hf_roundtrip(converter, structures[name])
            assert native_structure(cfg) == hf_structure(structures[name])

        tests.append(test_layer_structure_as_transformers_builds_it)

    if saved is not None:
        def test_save_pretrained_roundtrip(tmp_path):
            cfg = save_pretrained_roundtrip(converter, saved, tmp_path)
            assert native_structure(cfg) == hf_structure(saved)

        tests.append(test_save_pretrained_roundtrip)

    if class_defaults is not None:
        def test_absent_keys_take_the_class_defaults():
            assert_class_defaults(converter, *class_defaults)

        tests.append(test_absent_keys_take_the_class_defaults)

    return {test.__name__: test for test in tests}
