"""The README's minimal adapter, exactly as written there: every adapter law holds for it under the
gate's budget (a law whose every drawn config the adapter declines would be Unsatisfiable, so this
cannot pass vacuously), and the laws reject it once broken the ways real converters break."""
from __future__ import annotations

import contextlib
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, settings

from converters import ConversionError
from fixtures import profiles
from properties import PropertyViolation, adapter_laws
from fixtures import runner

README = Path(__file__).resolve().parents[2] / "README.md"
MAX_LINES = 150


def readme_code() -> str:
    text = README.read_text()
    return re.search(r"<!-- adapter-example -->\n```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    path = tmp_path_factory.mktemp("readme") / "meta_llama.py"
    path.write_text(readme_code())
    spec = importlib.util.spec_from_file_location("readme_meta_llama", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gate(law: str) -> settings:
    return settings(profiles.settings_for(law, "gate"), phases=(Phase.explicit, Phase.reuse, Phase.generate))


def test_the_example_is_short():
    assert len(readme_code().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("law", list(adapter_laws.ADAPTER_LAWS))
def test_every_law_holds(example, law):
    runner.adapter_hypothesis_test(law, example.MetaLlamaAdapter(), "llama", settings=gate(law))()


def test_declined_configs_name_the_key(example):
    with pytest.raises(adapter_laws.NotRepresentable) as info:
        example.MetaLlamaAdapter().import_config({"model_type": "llama", "attention_bias": True})
    assert info.value.field == "attention_bias"


@contextlib.contextmanager
def without_permutation(example):
    saved = example.permute, example.unpermute
    example.permute = example.unpermute = lambda w, heads: w.clone()
    try:
        yield
    finally:
        example.permute, example.unpermute = saved


def broken_variants(example):
    class PermutationSkipped(example.MetaLlamaAdapter):
        """q/k copied without the permutation both ways: a bit-exact round trip, a wrong model."""

        def import_weights(self, foreign, hf_tensors):
            with without_permutation(example):
                return super().import_weights(foreign, hf_tensors)

        def export_weights(self, foreign, state):
            with without_permutation(example):
                return super().export_weights(foreign, state)

    class TrainedHeadDropped(example.MetaLlamaAdapter):
        """A tied export that drops the output head however training changed it."""

        def export_weights(self, foreign, state):
            same = {**state, "output.weight": state["tok_embeddings.weight"]}
            return super().export_weights(foreign, same)

    class ThetaLost(example.MetaLlamaAdapter):
        def export_config(self, foreign):
            out = super().export_config(foreign)
            for key in ("rope_theta", "rope_parameters", "rope_scaling"):
                out.pop(key, None)
            return out

    class ExportUpcasts(example.MetaLlamaAdapter):
        def export_weights(self, foreign, state):
            return {n: t.to(torch.float64) for n, t in super().export_weights(foreign, state).items()}

    class ReducedPrecisionPathDropsFinalGain(example.MetaLlamaAdapter):
        """Right in float64 and float32; its bfloat16/float16 path forgets the final norm's gain
        (only the reduced-precision columns can see it)."""

        def forward(self, foreign, state, input_ids, dtype):
            if dtype in (torch.bfloat16, torch.float16):
                state = {**state, "norm.weight": torch.ones_like(state["norm.weight"])}
            return super().forward(foreign, state, input_ids, dtype)

    return [(PermutationSkipped, "forward_equivalence"), (TrainedHeadDropped, "tied_embeddings"),
            (ThetaLost, "hf_config_roundtrip"), (ExportUpcasts, "weight_roundtrip"),
            (ExportUpcasts, "key_bijection"), (ReducedPrecisionPathDropsFinalGain, "forward_equivalence")]


@pytest.mark.parametrize("index", range(6))
def test_broken_variants_are_rejected(example, index):
    broken, law = broken_variants(example)[index]
    with pytest.raises(PropertyViolation) as info:
        runner.adapter_hypothesis_test(law, broken(), "llama", settings=gate(law))()
    assert info.value.property == law


def test_the_head_refusal_names_it(example):
    adapter = example.MetaLlamaAdapter()
    foreign = adapter.import_config({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                                     "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 11,
                                     "tie_word_embeddings": True})
    hf = adapter_laws.hf_source({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                                 "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 11,
                                 "tie_word_embeddings": True}, 0, torch.float32)
    state = adapter.import_weights(foreign, hf)
    state["output.weight"] = state["output.weight"] + 1
    with pytest.raises(ConversionError, match="lm_head"):
        adapter.export_weights(foreign, state)
