"""Algebraic laws of the weight primitives (converters.weights); the streaming driver: test_weight_stream.py.

Laws: every transform's import inverts its export and vice versa, bit-exactly, in float32, bfloat16
and float64, on random odd/non-square shapes and random head layouts (kv_heads, group, head_dim,
rotary_dim drawn independently, so GQA and partial rotary are always in play). Correctness against
the HF forms is checked with per-row marker values, and the rotary permutation against the maths:
attention scores with interleaved complex rotation equal those with rotate_half after the permutation.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.errors import ConversionError
from converters import weights as w
from weight_cases import assemble, assert_bitwise, assert_no_sharing, randn

DTYPES = (torch.float32, torch.bfloat16, torch.float64)
LAWS = settings(max_examples=30, deadline=None, derandomize=True)


# ------------------------------------------------------------------------------------ strategies
@st.composite
def head_layouts(draw):
    """(heads, kv_heads, head_dim, rotary_dim): kv_heads first, then group; rotary_dim even ≤ head_dim."""
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    head_dim = 2 * draw(st.integers(1, 9))
    rotary_dim = 2 * draw(st.integers(0, head_dim // 2))
    return kv_heads * group, kv_heads, head_dim, rotary_dim


cols = st.integers(1, 7)  # trailing (input) dim: odd and non-square shapes
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**31 - 1)


def check_laws(rule: w.WeightRule, native_shapes, dtype, seed):
    """import∘export == id on native tensors and export∘import == id on HF tensors, bit-exact;
    inputs unmodified; outputs own their storage; export_shapes agrees with the real export."""
    native = [randn(s, dtype, seed + i) for i, s in enumerate(native_shapes)]
    saved = [t.clone() for t in native]
    hf = rule.export(native)
    assert_bitwise(native, saved, "export mutated its input")
    assert_no_sharing(hf, native)
    back = rule.import_(hf)
    assert_no_sharing(back, hf)
    assert_bitwise(back, native, f"import(export(x)) for {rule.describe()}")
    assert w.export_shapes([rule], dict(zip(rule.native, native_shapes))) == {n: tuple(t.shape) for n, t in zip(rule.hf, hf)}
    # the other way round, from fresh HF tensors of the exported shapes
    hf2 = [randn(t.shape, dtype, seed + 100 + i) for i, t in enumerate(hf)]
    saved = [t.clone() for t in hf2]
    native2 = rule.import_(hf2)
    assert_bitwise(hf2, saved, "import mutated its input")
    assert_no_sharing(native2, hf2)
    assert_bitwise(rule.export(native2), hf2, f"export(import(y)) for {rule.describe()}")
    check_import_blocks(rule, hf2, native2)
    return hf


def check_import_blocks(rule: w.WeightRule, hf, native) -> None:
    """An import given as blocks assembles to the import itself, bit-exact."""
    blocks = rule.import_blocks(hf)
    if blocks is not None:
        assert_bitwise([assemble(b, shape) for b, shape in blocks], native, f"import blocks of {rule.describe()}")


# ------------------------------------------------------------------------------ round-trip laws
@LAWS
@given(head_layouts(), cols, dtypes, seeds)
def test_split_qkv_roundtrip(layout, c, dtype, seed):
    heads, kv, d, r = layout
    rule = w.split_qkv("qkv", ("q", "k", "v"), heads=heads, kv_heads=kv, head_dim=d, rotary_dim=r)
    hf = check_laws(rule, [((heads + 2 * kv) * d, c)], dtype, seed)
    assert [tuple(t.shape) for t in hf] == [(heads * d, c), (kv * d, c), (kv * d, c)]


@LAWS
@given(head_layouts(), cols, dtypes, seeds)
def test_fused_qkv_roundtrip(layout, c, dtype, seed):
    heads, kv, d, r = layout
    rule = w.fused_qkv("qkv", "qkv_proj", heads=heads, kv_heads=kv, head_dim=d, rotary_dim=r)
    check_laws(rule, [((heads + 2 * kv) * d, c)], dtype, seed)


@LAWS
@given(head_layouts(), cols, dtypes, seeds)
def test_neox_qkv_roundtrip(layout, c, dtype, seed):
    heads, _, d, r = layout
    rule = w.neox_qkv("qkv", "query_key_value", heads=heads, kv_heads=heads, head_dim=d, rotary_dim=r)
    check_laws(rule, [(3 * heads * d, c)], dtype, seed)
    bias = w.neox_qkv_bias(("qb", "kb", "vb"), "query_key_value.bias", heads=heads, head_dim=d, rotary_dim=r)
    check_laws(bias, [(heads * d,)] * 3, dtype, seed)


@LAWS
@given(head_layouts(), st.sampled_from([(), (1,), (5,)]), dtypes, seeds)
def test_rotary_rows_roundtrip(layout, rest, dtype, seed):
    heads, kv, d, r = layout
    for n in (heads, kv, 1):  # q bias, k bias, per-head norm
        check_laws(w.rotary_rows("x", "y", heads=n, head_dim=d, rotary_dim=r), [(n * d, *rest)], dtype, seed)


@LAWS
@given(st.integers(1, 9), cols, st.booleans(), dtypes, seeds)
def test_gate_up_roundtrip(inter, c, bias, dtype, seed):
    shape = (2 * inter,) if bias else (2 * inter, c)
    hf = check_laws(w.split_gate_up("fc1", ("gate", "up")), [shape], dtype, seed)
    assert [tuple(t.shape) for t in hf] == [(inter, *shape[1:])] * 2
    check_laws(w.rename("fc1", "gate_up_proj"), [shape], dtype, seed)  # Phi-3: native layout already


@LAWS
@given(st.integers(1, 5), st.integers(1, 7), st.integers(1, 6), st.sampled_from([1, 2]), dtypes, seeds)
def test_experts_roundtrip(n, inter, hidden, parts, dtype, seed):
    fc1 = ("e.{e}.w1", "e.{e}.w3")[:parts]
    rules = w.experts("fc1", "fc2", experts=n, fc1=fc1, fc2="e.{e}.w2")
    check_laws(rules[0], [(n, 2 * inter, hidden)], dtype, seed)
    check_laws(rules[1], [(n, hidden, inter)], dtype, seed)


@LAWS
@given(st.integers(1, 40), dtypes, seeds)
def test_norm_offset_roundtrip_in_exact_range(size, dtype, seed):
    """Native draws 1 + 0.1 N lie in [0.5, 2] (clamped here): both round trips are bit-exact."""
    rule = w.norm("n", "hf_n", offset=1.0)
    x = (1 + 0.1 * randn((size,), torch.float64, seed)).clamp(0.5, 2).to(dtype)
    (y,) = rule.export([x])
    assert_bitwise(rule.import_([y]), [x])
    assert_bitwise(rule.export(rule.import_([y])), [y])  # HF states exported from native are exact too
    assert torch.equal(y, (x.double() - 1).to(dtype))  # w = x - 1 exactly (Sterbenz)


def test_identity_and_rename_roundtrip():
    for dtype in DTYPES:
        check_laws(w.rename("a", "b"), [(3, 5)], dtype, 0)
        check_laws(w.norm("a", "b"), [(7,)], dtype, 1)


def test_chain_and_parallel_compose():
    t = w.Chain((w.Chunk(2), w.Parallel((w.RotaryPermute(1, 4, 4), w.Identity())), w.Concat((4, 4))))
    rule = w.WeightRule(("x",), ("y",), t)
    check_laws(rule, [(8, 3)], torch.float32, 0)
    with pytest.raises(ValueError):
        w.Chain((w.Chunk(2), w.Concat((4, 4, 4))))  # yields 2, takes 3
    with pytest.raises(ValueError):
        w.WeightRule(("x",), ("a", "b", "c"), w.Chunk(2))  # arity disagrees with the names


# ------------------------------------------------------------------------- correctness (markers)
def marker(kind: int, head: int, dim: int) -> float:
    return kind * 10000 + head * 100 + dim


def hf_dim_source(j: int, r: int) -> int:
    """HF rotate_half row j of a head comes from native interleaved row …"""
    if j < r // 2:
        return 2 * j
    if j < r:
        return 2 * (j - r // 2) + 1
    return j


def native_qkv_markers(heads, kv, d):
    g = heads // kv
    rows = []
    for group in range(kv):
        rows += [marker(0, h, j) for h in range(group * g, (group + 1) * g) for j in range(d)]
        rows += [marker(1, group, j) for j in range(d)]
        rows += [marker(2, group, j) for j in range(d)]
    return torch.tensor(rows, dtype=torch.float64)[:, None].repeat(1, 3)


def expected_hf(kind, n_heads, d, r):
    permuted = r if kind < 2 else 0  # v is never permuted
    return torch.tensor([marker(kind, h, hf_dim_source(j, permuted)) for h in range(n_heads) for j in range(d)], dtype=torch.float64)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(head_layouts())
def test_split_qkv_markers(layout):
    heads, kv, d, r = layout
    rule = w.split_qkv("qkv", ("q", "k", "v"), heads=heads, kv_heads=kv, head_dim=d, rotary_dim=r)
    q, k, v = rule.export([native_qkv_markers(heads, kv, d)])
    assert torch.equal(q[:, 0], expected_hf(0, heads, d, r))
    assert torch.equal(k[:, 0], expected_hf(1, kv, d, r))
    assert torch.equal(v[:, 0], expected_hf(2, kv, d, r))
    (fused,) = w.fused_qkv("qkv", "p", heads=heads, kv_heads=kv, head_dim=d, rotary_dim=r).export([native_qkv_markers(heads, kv, d)])
    assert torch.equal(fused, torch.cat([q, k, v]))  # Phi-3: [q; k; v]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(head_layouts())
def test_neox_markers(layout):
    heads, _, d, r = layout
    (fused,) = w.neox_qkv("qkv", "p", heads=heads, kv_heads=heads, head_dim=d, rotary_dim=r).export([native_qkv_markers(heads, heads, d)])
    expected = torch.cat([expected_hf(kind, heads, d, r)[h * d:(h + 1) * d] for h in range(heads) for kind in range(3)])
    assert torch.equal(fused[:, 0], expected)  # per head [q_h; k_h; v_h]
    # GPT-NeoX's own split: view(heads, 3 * head_dim).chunk(3)
    q, k, v = fused[:, 0].view(heads, 3 * d).chunk(3, dim=-1)
    assert torch.equal(q.reshape(-1), expected_hf(0, heads, d, r)) and torch.equal(k.reshape(-1), expected_hf(1, heads, d, r))
    biases = [expected_hf(0, heads, d, 0), expected_hf(1, heads, d, 0), expected_hf(2, heads, d, 0)]  # native order
    (b,) = w.neox_qkv_bias(("qb", "kb", "vb"), "p.bias", heads=heads, head_dim=d, rotary_dim=r).export(biases)
    assert torch.equal(b, expected)


def test_neox_refuses_gqa():
    with pytest.raises(ConversionError, match="qkv"):
        w.neox_qkv("qkv", "p", heads=4, kv_heads=2, head_dim=4, rotary_dim=4)


def test_gate_up_markers():
    fc1 = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    gate, up = w.split_gate_up("fc1", ("gate", "up")).export([fc1])
    assert gate[:, 0].tolist() == [0, 1, 2, 3, 4] and up[:, 0].tolist() == [5, 6, 7, 8, 9]


def test_expert_unstack_order():
    n, inter, hidden = 3, 2, 4
    fc1 = torch.tensor([[[1000 * e + row] * hidden for row in range(2 * inter)] for e in range(n)], dtype=torch.float32)
    fc2 = torch.tensor([[[1000 * e + row] * inter for row in range(hidden)] for e in range(n)], dtype=torch.float32)
    r1, r2 = w.experts("fc1", "fc2", experts=n, fc1=("experts.{e}.w1.weight", "experts.{e}.w3.weight"), fc2="experts.{e}.w2.weight")
    out1 = dict(zip(r1.hf, r1.export([fc1])))
    out2 = dict(zip(r2.hf, r2.export([fc2])))
    assert list(out1) == [f"experts.{e}.{p}.weight" for e in range(n) for p in ("w1", "w3")]
    for e in range(n):
        assert out1[f"experts.{e}.w1.weight"][:, 0].tolist() == [1000 * e + i for i in range(inter)]  # gate
        assert out1[f"experts.{e}.w3.weight"][:, 0].tolist() == [1000 * e + inter + i for i in range(inter)]  # up
        assert torch.equal(out2[f"experts.{e}.w2.weight"], fc2[e])
    # one template: each expert's [gate; up] whole (Qwen2-MoE-style names work the same way)
    (r,) = w.experts("fc1", "fc2", experts=n, fc1="mlp.experts.{e}.gate_up_proj.weight", fc2="x.{e}")[:1]
    assert r.hf == tuple(f"mlp.experts.{e}.gate_up_proj.weight" for e in range(n))
    assert all(torch.equal(t, fc1[e]) for e, t in enumerate(r.export([fc1])))


# ------------------------------------------------------------- rotary permutation preserves maths
def rotate_interleaved(x, pos, r, theta=10000.0):
    """Native: pairs (2j, 2j+1) as complex numbers times e^{i pos θ_j}; dims ≥ r pass through."""
    inv = 1.0 / theta ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    rot = torch.view_as_complex(x[..., :r].reshape(*x.shape[:-1], r // 2, 2).contiguous())
    rot = rot * torch.polar(torch.ones_like(inv), pos[:, None] * inv)
    return torch.cat([torch.view_as_real(rot).flatten(-2), x[..., r:]], dim=-1)


def rotate_half_hf(x, pos, r, theta=10000.0):
    """HF: cos/sin tables cat(freqs, freqs), q * cos + rotate_half(q) * sin on the first r dims."""
    inv = 1.0 / theta ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    emb = torch.cat([pos[:, None] * inv] * 2, dim=-1)
    xr = x[..., :r]
    half = torch.cat([-xr[..., r // 2:], xr[..., :r // 2]], dim=-1)
    return torch.cat([xr * emb.cos() + half * emb.sin(), x[..., r:]], dim=-1)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(head_layouts(), st.integers(1, 6), seeds)
def test_rotary_permutation_preserves_attention_scores(layout, hidden, seed):
    heads, kv, d, r = layout
    g = heads // kv
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn((heads + 2 * kv) * d, hidden, generator=gen, dtype=torch.float64)
    x = torch.randn(5, hidden, generator=gen, dtype=torch.float64)  # 5 tokens
    pos = torch.randint(0, 5000, (5,), generator=gen).double()

    # native: grouped rows, interleaved rotation
    y = (x @ qkv.T).view(5, kv, g + 2, d)
    nq, nk = y[:, :, :g].reshape(5, heads, d), y[:, :, g]
    nq, nk = rotate_interleaved(nq.transpose(0, 1), pos, r), rotate_interleaved(nk.transpose(0, 1), pos, r)
    native_scores = torch.einsum("hsd,htd->hst", nq, nk.repeat_interleave(g, dim=0))

    # HF: exported q/k projections, rotate_half, repeat_kv
    wq, wk, _ = w.split_qkv("qkv", ("q", "k", "v"), heads=heads, kv_heads=kv, head_dim=d, rotary_dim=r).export([qkv])
    hq = rotate_half_hf((x @ wq.T).view(5, heads, d).transpose(0, 1), pos, r)
    hk = rotate_half_hf((x @ wk.T).view(5, kv, d).transpose(0, 1), pos, r)
    hf_scores = torch.einsum("hsd,htd->hst", hq, hk.repeat_interleave(g, dim=0))
    torch.testing.assert_close(hf_scores, native_scores, rtol=1e-9, atol=1e-9)


def test_unpermuted_q_changes_scores():
    """The score test has teeth: skipping the permutation (a realistic bug) is visible."""
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 3, 8, generator=gen, dtype=torch.float64), torch.randn(1, 3, 8, generator=gen, dtype=torch.float64)
    pos = torch.tensor([0.0, 7.0, 300.0], dtype=torch.float64)
    native = rotate_interleaved(q, pos, 8) @ rotate_interleaved(k, pos, 8).transpose(-1, -2)
    wrong = rotate_half_hf(q, pos, 8) @ rotate_half_hf(k, pos, 8).transpose(-1, -2)
    assert not torch.allclose(native, wrong)


def test_k_permutation_must_use_kv_heads():
    """transformers' PermuteForRope lesson: a k rule declared with the q head count is refused."""
    k = torch.randn(2 * 8, 3)
    with pytest.raises(ConversionError, match="k_bias"):
        w.rotary_rows("k_bias", "k_proj.bias", heads=4, head_dim=8, rotary_dim=8).export([k])


def test_partial_rotary_passes_tail_through():
    x = torch.arange(2 * 10, dtype=torch.float32)  # 2 heads of 10, rotary 4
    (y,) = w.rotary_rows("b", "c", heads=2, head_dim=10, rotary_dim=4).export([x])
    assert y.tolist() == [0, 2, 1, 3, 4, 5, 6, 7, 8, 9, 10, 12, 11, 13, 14, 15, 16, 17, 18, 19]
    (z,) = w.rotary_rows("b", "c", heads=2, head_dim=10, rotary_dim=0).export([x])
    assert torch.equal(z, x)


def test_per_head_norm_permutation_commutes_with_scaling():
    """A per-head q norm weight (heads=1) permuted like each q head keeps q * w consistent."""
    heads, d, r = 3, 6, 4
    q, wn = torch.randn(heads * d), 1 + 0.1 * torch.randn(d)
    (pq,) = w.RotaryPermute(heads, d, r).export([q])
    (pw,) = w.RotaryPermute(1, d, r).export([wn])
    (pqw,) = w.RotaryPermute(heads, d, r).export([(q.view(heads, d) * wn).reshape(-1)])
    assert torch.equal(pqw, (pq.view(heads, d) * pw).reshape(-1))


# ------------------------------------------------------------------------- norm offset: findings
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_norm_offset_exact_range_exhaustive(dtype):
    """Every value of a 16-bit dtype in [0.5, 2**p] survives (x - 1) + 1; the first failures are
    just above 2**p, and most values below 0.5 fail (only multiples of 2**-p survive)."""
    lo, hi = w.exact_offset_range(dtype)
    x = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[torch.isfinite(x)]
    ok = (x - 1) + 1 == x
    xd = x.double()
    assert bool(ok[(xd >= lo) & (xd <= hi)].all())
    assert not bool(ok[(xd > hi) & (xd <= 2 * hi)].all())
    small = (xd > 0) & (xd < 0.5)
    p = w.transforms.significand_bits(dtype)
    assert p == {torch.bfloat16: 8, torch.float16: 11}[dtype]
    assert torch.equal(ok[small], (xd[small] * 2**p).frac() == 0)
    # HF-first: (w + 1) - 1 is exact on all of [-2, -0.5], rarely for small |w|
    ok_w = (x + 1) - 1 == x
    assert bool(ok_w[(xd >= -2) & (xd <= -0.5)].all())
    assert ok_w[(xd.abs() < 0.1) & (xd != 0)].float().mean() < 0.05


def test_norm_offset_inexact_outside_range_and_strict():
    x = torch.tensor([0.1, 1.0, 1.5], dtype=torch.float32)
    rule = w.norm("n", "hf", offset=1.0)
    (back,) = rule.import_(rule.export([x]))
    assert back[0] != x[0] and torch.equal(back[1:], x[1:])  # 0.1 rounds: 0.10000002384…
    strict = w.norm("n", "hf", offset=1.0, strict=True)
    with pytest.raises(ConversionError, match="^n: norm offset"):
        strict.export([x])
    strict.export([x[1:]])  # exact values pass
    with pytest.raises(ConversionError, match="^hf: norm offset"):
        strict.import_([torch.tensor([0.001], dtype=torch.bfloat16)])  # a small stored w: 1 + w rounds in bf16
