"""Real public configs, as a new user meets them: a tiny random HF model built by transformers from
each file of ``strategies/real_configs`` (and from transformers' default config of every registered
architecture), sizes shrunk and every other key kept (``fixtures.realistic.shrink``), saved with
``save_pretrained``, then ``convcheck convert`` HF → native → HF. The round trip must give back every
tensor bit for bit and the same ``AutoConfig.from_pretrained(...).to_dict()`` (apart from
``transformers_version``, and ``_name_or_path``, which is the folder it was loaded from), and the
native model must compute HF's logits within the float64 tolerance.

Every weight is random and non-default, norms and biases included.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import checkpoints
import native
from checkpoints import cli
from fixtures import realistic, tolerances
from properties.common import HF_IMPLEMENTATION, causal_lm_class, hf_config, jsonable, quiet_transformers

CASES = realistic.real_and_default_configs()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: keys of ``to_dict()`` that describe the loading, not the file
LOADING_KEYS = ("transformers_version", "_name_or_path")


def build_hf(hf: dict, dtype: torch.dtype, path: Path, seed: int = 0) -> None:
    """A tiny HF checkpoint of ``hf``: transformers builds the model, every parameter is drawn at
    random (N(0, 0.5²), norms and biases too), then ``save_pretrained`` in ``dtype``."""
    config = hf_config(hf)
    g = torch.Generator().manual_seed(seed)
    with quiet_transformers():
        model = causal_lm_class(config)._from_config(config, dtype=torch.float32, **HF_IMPLEMENTATION)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.to(dtype).save_pretrained(path)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def loaded_config(path: Path) -> dict:
    from transformers import AutoConfig

    with quiet_transformers():
        d = jsonable(AutoConfig.from_pretrained(path).to_dict())
    return {k: v for k, v in d.items() if k not in LOADING_KEYS}


def convert(*argv) -> None:
    code = cli.main(["convert", *map(str, argv), "-q"])
    assert code == 0, f"convcheck convert {' '.join(map(str, argv))} exited {code}"


def hf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with quiet_transformers(), torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, **HF_IMPLEMENTATION).eval()
        return model(input_ids=ids).logits


def native_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    cfg, state = checkpoints.load_checkpoint(path)
    model = native.NativeModel(cfg)
    model.load_state_dict({k: v.to(torch.float64) for k, v in state.items()}, strict=True, assign=True)
    with torch.no_grad():
        return model.eval()(ids)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name,real", CASES, ids=[name for name, _ in CASES])
def test_cli_round_trip(name, real, dtype, tmp_path):
    src, mid, dst = tmp_path / "hf", tmp_path / "native", tmp_path / "back"
    build_hf(realistic.shrink(real), DTYPES[dtype], src)
    vocab = loaded_config(src)["vocab_size"]
    ids = torch.randint(0, vocab, (1, realistic.TINY_TOKENS), generator=torch.Generator().manual_seed(1))
    try:
        reference = hf_logits(src, ids)
    except (TypeError, ValueError, RuntimeError) as e:
        # transformers cannot run its own model of this config (DeepSeek-V2's default has
        # num_experts_per_tok=None): there is no model to preserve, so convert must refuse it
        assert cli.main(["convert", str(src), str(mid), "--to", "native", "-q"]) == 2, (
            f"transformers cannot run this config ({type(e).__name__}: {e}), yet convert accepted it")
        assert not mid.exists(), "a refused conversion left an output directory"
        return
    convert(src, mid, "--to", "native")
    convert(mid, dst, "--to", "hf")

    expected, actual = loaded_config(src), loaded_config(dst)
    diffs = [f"{k}: {expected.get(k, '<absent>')!r} -> {actual.get(k, '<absent>')!r}"
             for k in sorted(set(expected) | set(actual)) if expected.get(k, "<absent>") != actual.get(k, "<absent>")]
    assert not diffs, "AutoConfig.from_pretrained(...).to_dict() changed: " + "; ".join(diffs[:8])

    tolerances.check_close(native_logits(mid, ids), reference, torch.float64, f"{name} logits")

    before, after = tensors(src), tensors(dst)
    assert sorted(after) == sorted(before), f"tensor names differ: {sorted(set(before) ^ set(after))[:6]}"
    changed = [n for n in before if before[n].dtype != after[n].dtype or not torch.equal(
        before[n].view(torch.uint8), after[n].view(torch.uint8))]
    assert not changed, f"{len(changed)} tensors changed bytes: {changed[:6]}"


REAL = [(name, real) for name, real in CASES if not name.startswith("default-")]


@pytest.mark.parametrize("name,real", REAL, ids=[name for name, _ in REAL])
def test_hf_config_roundtrip_of_the_published_file(name, real):
    """The file as published (no shrinking), through ``hf_config_roundtrip``: also those that the
    strategies leave out of their explicit examples because transformers warns about them."""
    import converters
    from properties.config import hf_config_roundtrip

    hf_config_roundtrip(converters.detect(real), real)
