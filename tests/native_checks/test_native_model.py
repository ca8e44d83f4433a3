"""The whole model, from the maths: residual structure by placement, tied head, padding semantics,
dtypes, per-layer hidden states, and checkpoint loading."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from native import NativeModel, random_state

from native_cases import CONFIGS, HIDDEN, ROTARIES, block, built, model, rel, tokens

PLACEMENTS = ("pre", "post", "sandwich", "parallel")


def test_tied_output_is_hidden_times_embedding_transpose():
    m = built(CONFIGS["llama_tied"])
    ids = tokens(2, 9)
    logits, hidden = m(ids, return_hidden=True)
    torch.testing.assert_close(logits, m.final_norm(hidden[-1]) @ m.embedding.weight.T, rtol=0, atol=0)
    assert "output.weight" not in m.state_dict()


def test_untied_output_uses_its_own_matrix():
    m = built(CONFIGS["llama"])
    logits, hidden = m(tokens(2, 9), return_hidden=True)
    torch.testing.assert_close(logits, m.final_norm(hidden[-1]) @ m.output.weight.T, rtol=0, atol=0)


def test_hidden_states_one_per_layer_plus_embedding():
    cfg = CONFIGS["sandwich_gemma"]
    m = built(cfg)
    ids = tokens(2, 9)
    logits, hidden = m(ids, return_hidden=True)
    assert len(hidden) == cfg.num_layers + 1
    torch.testing.assert_close(hidden[0], m.embedding(ids) * HIDDEN ** 0.5)
    assert torch.equal(logits, m(ids))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_zeroed_sublayers_leave_the_residual_stream_untouched(placement):
    """Identity norms and zero attention/MLP outputs: every layer is the identity."""
    cfg = model(block(placement, q_bias=True, mlp=CONFIGS["moe_shared_gate"].decoder.blocks[0].mlp if placement == "pre" else None), layers=3)
    state = random_state(cfg, 0, dtype=torch.float64)
    for name in state:
        if "norm.weight" in name:
            state[name] = torch.ones_like(state[name])
        elif name.endswith(("o.weight", "fc2.weight", "experts.fc2")):
            state[name] = torch.zeros_like(state[name])
    m = NativeModel(cfg).double()
    m.load_state_dict(state)
    ids = tokens(2, 9)
    logits, hidden = m(ids, return_hidden=True)
    for h in hidden:
        assert torch.equal(h, hidden[0])
    x = hidden[0]
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) @ m.output.weight.T
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_final_softcap_bounds_logits():
    cfg = model(block(), final_softcap=0.5)
    logits = built(cfg)(tokens(2, 9))
    assert logits.abs().max() < 0.5
    uncapped = built(model(block()))(tokens(2, 9))
    torch.testing.assert_close(logits, torch.tanh(uncapped / 0.5) * 0.5, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["llama", "sandwich_gemma", "parallel_neox", "post_full_qk_norm", "moe_shared_gate", "rotary_yarn"])
def test_float32_close_to_float64(name):
    cfg = CONFIGS[name]
    ids = tokens(2, 24)
    ref = built(cfg, dtype=torch.float64)(ids)
    assert rel(built(cfg, dtype=torch.float32)(ids), ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float64(dtype):
    cfg = CONFIGS["sandwich_gemma"]
    ids = tokens(2, 24)
    out = built(cfg, dtype=dtype)(ids)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel(out, built(cfg)(ids)) < 5e-2


def test_embedding_multiplier_is_cast_to_the_weight_dtype():
    cfg = CONFIGS["sandwich_gemma"]
    m = built(cfg, dtype=torch.bfloat16)
    ids = tokens(1, 5)
    _, hidden = m(ids, return_hidden=True)
    assert torch.equal(hidden[0], m.embedding(ids) * torch.tensor(HIDDEN ** 0.5, dtype=torch.bfloat16))


@pytest.mark.parametrize("name", ["llama", "sandwich_gemma", "parallel_neox", "moe_shared_gate", "rotary_default_partial"])
def test_right_padding_keeps_the_unpadded_logits(name):
    m = built(CONFIGS[name])
    ids = tokens(2, 20)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    padded = m(ids, mask)
    torch.testing.assert_close(padded[1, :13], m(ids[1:, :13])[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(padded[0], m(ids[:1])[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["llama", "sandwich_gemma", "moe_shared_gate"])
def test_left_padding_shifts_positions_but_rotary_is_relative(name):
    """HF semantics: positions stay 0..T-1 under padding. With plain RoPE scores depend on relative
    positions only, so the padded keys being masked is all that keeps the logits unchanged."""
    m = built(CONFIGS[name])
    ids = tokens(1, 20)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    torch.testing.assert_close(m(ids, mask)[0, 6:], m(ids[:, 6:])[0], rtol=1e-9, atol=1e-9)
    assert rel(m(ids)[0, 6:], m(ids[:, 6:])[0]) > 1e-3  # without the mask the pad tokens do matter


@pytest.mark.parametrize("name", sorted(ROTARIES))
def test_every_rotary_kind_is_finite_past_original_context(name):
    cfg = CONFIGS[f"rotary_{name}"]
    m = built(cfg)
    out = m(tokens(1, 3 * cfg.max_position_embeddings // 2))  # beyond max_position_embeddings (64) and every original (16)
    assert torch.isfinite(out).all()


def test_rotary_kinds_that_depend_on_length_change_with_it():
    for name in ("dynamic", "longrope"):
        m = built(CONFIGS[f"rotary_{name}"])
        ids = tokens(1, 100)
        assert rel(m(ids)[:, :10], m(ids[:, :10])) > 1e-4, name


def test_distinct_blocks_get_their_own_rotary_and_window():
    cfg = CONFIGS["sandwich_gemma"]
    assert cfg.decoder.layer(0) != cfg.decoder.layer(1)
    m = built(cfg)
    ids = tokens(1, 20)
    swapped = model(*reversed(cfg.decoder.blocks), layers=3, tied=True, multiplier=HIDDEN ** 0.5, final_softcap=15.0)
    other = NativeModel(swapped).double()
    other.load_state_dict(m.state_dict())
    assert rel(other(ids), m(ids)) > 1e-3


def test_dtype_follows_the_parameters():
    m = built(CONFIGS["moe"], dtype=torch.float32)
    assert m(tokens(1, 4)).dtype == torch.float32


def test_default_init_is_finite_with_unit_norms_and_zero_biases():
    m = NativeModel(CONFIGS["mha_biases"])
    for name, p in m.state_dict().items():
        if "norm.weight" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert not p.any(), name
    assert torch.isfinite(m(tokens(1, 5))).all()


def test_native_never_imports_transformers():
    code = "import sys, native; assert 'transformers' not in sys.modules, 'native imported transformers'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu(dtype):
    cfg = CONFIGS["sandwich_gemma"]
    cpu = built(cfg, dtype=dtype)
    ids = tokens(2, 24)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    on_cuda = cpu.to("cuda")(ids.cuda(), mask.cuda()).cpu()
    assert on_cuda.dtype == dtype
    assert rel(on_cuda, built(cfg, dtype=dtype)(ids, mask)) < {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 5e-2)
