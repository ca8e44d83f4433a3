"""forward_equivalence at realistic sizes: the real configs at 2 layers and full width,
random weights, bf16, 2k–8k tokens, on CUDA (marked ``gpu``: skipped with "CUDA not available"
without one). On CPU, one smoke test runs the same code at reduced width and 256 tokens.
"""
from __future__ import annotations

import pytest
import torch

from fixtures import realistic

CASES = realistic.cases()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_real_config_forward_equivalence_on_gpu(case, dtype):
    m = realistic.measure(case, getattr(torch, dtype), "cuda")
    torch.cuda.empty_cache()
    assert m.ok, f"{case.id} T={case.tokens}: {m.describe()}"


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in CASES if c.model_type == "llama"], ids=lambda c: c.id)
def test_real_config_bug_caught_on_gpu(case):
    """A single bug (k/v swapped) is caught at realistic size in bf16."""
    from meta import broken

    m = realistic.measure(case, torch.bfloat16, "cuda", converter=broken.KVSwapped())
    assert not m.ok, f"k/v swap not caught at realistic size: error {m.native_error:.3e} vs {m.tolerance:.3e}"


def test_realistic_smoke_on_cpu():
    """The realistic path (real config, reduced depth, long unpadded sequence, bf16, HF float64
    reference) at reduced width on CPU: Llama-3.1-8B's config at hidden 256, 4 heads, 256 tokens."""
    case = next((c for c in CASES if c.model_type == "llama"), None)
    if case is None:
        pytest.skip(f"no Llama-3.1-8B config under {realistic.real_configs_dir()}")
    hf = realistic.reduce(case.hf, width={"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                                          "num_key_value_heads": 2, "head_dim": 64}, vocab=1024)
    small = realistic.Case(case.file, hf, 256)
    m = realistic.measure(small, torch.bfloat16, "cpu")
    assert m.ok, m.describe()
