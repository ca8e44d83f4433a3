"""Meta-tests of fixtures/tolerances.py: the metric, the table, and the margin (DESIGN §4).

The margin is demonstrated with HF's own Llama, independent of any converter: the float32 run's
error against the float64 run (what rounding alone does) must sit far below the float32
tolerance, and each single realistic bug, applied to the float64 weights, must land far above the
tolerance of every CPU dtype.
"""
from __future__ import annotations

import math

import pytest
import torch

from fixtures import tolerances as tol
from fixtures.tolerances import ToleranceExceeded, check_close, compare, relative_error, tolerance


# ------------------------------------------------------------------------------------- the metric
def test_relative_error_basics():
    b = torch.tensor([[3.0, 4.0]])
    assert relative_error(b, b) == 0.0
    assert relative_error(b * 1.1, b) == pytest.approx(0.1)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_error(torch.ones(2), torch.zeros(2)) == math.inf
    assert relative_error(torch.tensor([float("nan"), 1.0]), torch.ones(2)) == math.inf
    with pytest.raises(ValueError, match="shape"):
        relative_error(torch.ones(2), torch.ones(3))


def test_mask_selects_positions():
    expected = torch.ones(2, 3, 5)
    actual = expected.clone()
    actual[1, 2] += 100.0  # a padded position: ignored under the mask
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    assert relative_error(actual, expected, mask) == 0.0
    assert relative_error(actual, expected) > 1.0


def test_check_close_reports_the_figures():
    expected = torch.ones(2, 3, 4, dtype=torch.float64)
    result = check_close(expected + 1e-9, expected, torch.float64, "logits")
    assert result.ok and result.margin > 1 and result.tolerance == tolerance("float64")
    actual = expected.clone()
    actual[1, 2, 3] = 2.0
    with pytest.raises(ToleranceExceeded) as info:
        check_close(actual, expected, "fp32", "qwen2 logits")
    message = str(info.value)
    assert "qwen2 logits" in message and "float32" in message and "[1, 2, 3]" in message
    assert info.value.comparison.error == pytest.approx(1 / math.sqrt(24))
    nan = expected.clone()
    nan[0, 0, 0] = float("nan")
    assert not compare(nan, expected, torch.float32).ok


def test_table_follows_its_formula_and_order():
    for name, t in tol.TOLERANCES.items():
        assert t.value() == pytest.approx(t.factor * t.growth * t.unit_roundoff + t.floor)
        assert t.value(baseline=0.0) == t.floor
        assert tolerance(getattr(torch, name)) == t.value()
    assert tolerance("float64") < tolerance("float32") < tolerance("float16") < tolerance("bfloat16")
    assert 1e-6 < tolerance("float64") <= 1e-5 and 1e-5 < tolerance("float32") <= 1e-4
    assert tol.dtype_name("bf16") == "bfloat16" and tol.dtype_name(torch.half) == "float16"
    with pytest.raises(KeyError, match="int8"):
        tolerance("int8")


# -------------------------------------------------------------------------------------- the margin
VOCAB, HIDDEN, HEADS, KV, HEAD_DIM, LAYERS = 61, 28, 4, 2, 8, 3


def _llama(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
                         max_position_embeddings=32, attention_bias=True, attn_implementation="eager")
    return LlamaForCausalLM(config).to(dtype).eval()


def _unit_gain_state(model, seed=0):
    """Weights at the scale forward tests must use (fixtures/tolerances.py, "Power")."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        if p.ndim == 2:
            value = torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[1])
        elif "norm" in name:
            value = 1 + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64)
        else:
            value = 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64)
        state[name] = value
    return state


L = "model.layers.1."


def _swap(state, a, b):
    state[a], state[b] = state[b], state[a]


def _unpermuted_q(state):
    """q rows left in interleaved rotary order (the permutation a converter must apply, skipped)."""
    w = state[L + "self_attn.q_proj.weight"]
    state[L + "self_attn.q_proj.weight"] = w.view(HEADS, HEAD_DIM // 2, 2, -1).transpose(1, 2).reshape(HEADS * HEAD_DIM, -1)


BUGS = {
    "k and v swapped": lambda s: _swap(s, L + "self_attn.k_proj.weight", L + "self_attn.v_proj.weight"),
    "q/k permutation skipped": _unpermuted_q,
    "q bias dropped": lambda s: s[L + "self_attn.q_proj.bias"].zero_(),
    "v bias dropped": lambda s: s[L + "self_attn.v_proj.bias"].zero_(),
    "norm offset missing": lambda s: s[L + "input_layernorm.weight"].sub_(1.0),
    "gate/up swapped": lambda s: _swap(s, L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"),
    "final norm offset missing": lambda s: s["model.norm.weight"].sub_(1.0),
}


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = _llama(torch.float64)
    state = _unit_gain_state(model)
    model.load_state_dict(state)
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens).logits
    return state, tokens, logits


def _logits(state, tokens, dtype):
    model = _llama(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    with torch.no_grad():
        return model(tokens).logits


def test_rounding_alone_sits_well_inside_the_float32_tolerance(reference):
    state, tokens, expected = reference
    result = check_close(_logits(state, tokens, torch.float32), expected, torch.float32, "HF float32 vs float64")
    assert result.margin > 20, result.describe()


def test_reduced_precision_with_a_measured_baseline(reference):
    state, tokens, expected = reference
    actual = _logits(state, tokens, torch.bfloat16)
    baseline = relative_error(actual, expected)
    assert baseline < tol.TOLERANCES["bfloat16"].baseline_bound  # the static bound is conservative
    check_close(actual, expected, "bfloat16", baseline=baseline)


@pytest.mark.parametrize("bug", list(BUGS))
def test_single_bugs_exceed_every_cpu_tolerance_by_a_wide_margin(reference, bug):
    state, tokens, expected = reference
    broken = {k: v.clone() for k, v in state.items()}
    BUGS[bug](broken)
    for dtype in tol.CPU_DTYPES:
        error = relative_error(_logits(broken, tokens, getattr(torch, dtype)), expected)
        assert error > 100 * tolerance(dtype), f"{bug} in {dtype}: error {error:.3e}, tolerance {tolerance(dtype):.3e}"
