"""Algebraic laws of the weight primitives (converters.weights) and the streaming driver's contract.

Laws: every transform's import inverts its export and vice versa, bit-exactly, in float32, bfloat16
and float64, on random odd/non-square shapes and random head layouts (kv_heads, group, head_dim,
rotary_dim drawn independently, so GQA and partial rotary are always in play). Correctness against
the HF forms is checked with per-row marker values, and the rotary permutation against the maths:
attention scores with interleaved complex rotation equal those with rotate_half after the permutation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.errors import ConversionError
from converters import weights as w

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


def randn(shape, dtype, seed):
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def assert_bitwise(actual, expected, what=""):
    assert len(actual) == len(expected), what
    for i, (a, b) in enumerate(zip(actual, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}[{i}]: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{what}[{i}]: values differ"


def assert_no_sharing(outputs, inputs):
    ptrs = [t.untyped_storage().data_ptr() for t in inputs if t.numel()]
    seen = set(ptrs)
    for t in outputs:
        if not t.numel():
            continue
        p = t.untyped_storage().data_ptr()
        assert p not in seen, "an output shares storage with an input or another output"
        assert t.is_contiguous() and t.storage_offset() == 0
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
        seen.add(p)


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


def assemble(blocks, shape) -> torch.Tensor:
    return torch.cat([b.reshape(-1) for b in blocks]).view(shape)


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


# ----------------------------------------------------------------------------------- driver
class CountingSource(Mapping):
    """A lazy state dict: records every load, the order, and how many loaded tensors are alive."""

    def __init__(self, tensors, with_shape_of=True):
        self._tensors = dict(tensors)
        self.loads: list[str] = []
        self.alive = 0
        self.max_alive = 0
        if with_shape_of:
            self.shape_of = lambda name: tuple(self._tensors[name].shape)

    def __getitem__(self, name):
        t = self._tensors[name].clone()
        self.loads.append(name)
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        import weakref
        weakref.finalize(t, self._dead)
        return t

    def _dead(self):
        self.alive -= 1

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self):
        return len(self._tensors)


def small_llama(tied=False, layers=2, heads=4, kv=2, d=6, r=4, hidden=5, inter=7, vocab=11):
    def layer(i, _):
        return [
            w.norm("attn_norm.weight", "input_layernorm.weight"),
            w.split_qkv("attn.qkv.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
                        heads=heads, kv_heads=kv, head_dim=d, rotary_dim=r),
            w.rotary_rows("attn.q_bias", "self_attn.q_proj.bias", heads=heads, head_dim=d, rotary_dim=r),
            w.rename("attn.o.weight", "self_attn.o_proj.weight"),
            w.norm("mlp_norm.weight", "post_attention_layernorm.weight"),
            w.split_gate_up("mlp.fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
            w.rename("mlp.fc2.weight", "mlp.down_proj.weight"),
        ]

    rules = [*w.embedding_and_head(tied), *w.walk_layers(range(layers), layer), w.norm("final_norm.weight", "model.norm.weight")]
    shapes = {"embedding.weight": (vocab, hidden)}
    for i in range(layers):
        shapes.update({
            f"layers.{i}.attn_norm.weight": (hidden,), f"layers.{i}.attn.qkv.weight": ((heads + 2 * kv) * d, hidden),
            f"layers.{i}.attn.q_bias": (heads * d,), f"layers.{i}.attn.o.weight": (hidden, heads * d),
            f"layers.{i}.mlp_norm.weight": (hidden,), f"layers.{i}.mlp.fc1.weight": (2 * inter, hidden),
            f"layers.{i}.mlp.fc2.weight": (hidden, inter),
        })
    shapes["final_norm.weight"] = (hidden,)
    if not tied:
        shapes["output.weight"] = (vocab, hidden)
    state = {n: randn(s, torch.float32, k) for k, (n, s) in enumerate(shapes.items())}
    return rules, shapes, state


def test_stream_roundtrip_and_hf_names():
    rules, shapes, state = small_llama()
    hf_shapes = w.export_shapes(rules, shapes)
    hf = dict(w.convert_stream(rules, state, "export", shapes))
    assert {n: tuple(t.shape) for n, t in hf.items()} == hf_shapes
    assert "model.layers.1.self_attn.k_proj.weight" in hf and "lm_head.weight" in hf
    assert set(hf) == set(w.claimed_names(rules, "hf"))
    assert set(state) == set(w.claimed_names(rules, "native"))
    back = dict(w.convert_stream(rules, hf, "import", hf_shapes))
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)
    assert_no_sharing(list(hf.values()), list(state.values()))
    assert w.import_shapes(rules, hf_shapes) == shapes


def test_stream_is_lazy_in_rule_order_and_bounded():
    rules, shapes, state = small_llama()
    source = CountingSource(state)
    stream = w.convert_stream(rules, source, "export", shapes)
    assert source.loads == []  # the up-front checks load nothing
    names = []
    for name, tensor in stream:
        names.append(name)
        del tensor
    assert source.loads == [n for rule in rules for n in rule.native]  # each key once, in rule order
    assert names == w.claimed_names(rules, "hf")
    assert source.max_alive == 1  # every rule here has one source: one loaded tensor alive at a time
    assert source.alive == 0


def test_stream_errors_name_the_tensor():
    rules, shapes, state = small_llama()
    missing = {k: v for k, v in state.items() if k != "layers.1.attn.qkv.weight"}
    with pytest.raises(ConversionError, match=r"^layers\.1\.attn\.qkv\.weight: missing"):
        w.convert_stream(rules, missing, "export", shapes)
    extra = {**state, "layers.0.attn.k_bias": torch.zeros(12)}
    with pytest.raises(ConversionError, match=r"^layers\.0\.attn\.k_bias: not claimed"):
        w.convert_stream(rules, extra, "export", shapes)
    bad = {**state, "layers.0.mlp.fc2.weight": torch.zeros(5, 8)}
    with pytest.raises(ConversionError, match=r"^layers\.0\.mlp\.fc2\.weight: shape \(5, 8\), expected \(5, 7\)"):
        w.convert_stream(rules, CountingSource(bad), "export", shapes)  # up-front, via shape_of
    lazy = CountingSource(bad, with_shape_of=False)
    stream = w.convert_stream(rules, lazy, "export", shapes)
    with pytest.raises(ConversionError, match=r"^layers\.0\.mlp\.fc2\.weight: shape"):
        list(stream)  # at load time, without shape_of
    twice = rules + [w.rename("layers.0.mlp.fc2.weight", "other")]
    with pytest.raises(ConversionError, match=r"^layers\.0\.mlp\.fc2\.weight: claimed by two rules"):
        w.convert_stream(twice, state, "export")
    twice_hf = rules + [w.rename("somewhere", "model.norm.weight")]
    with pytest.raises(ConversionError, match=r"^model\.norm\.weight: claimed by two rules"):
        w.convert_stream(twice_hf, state, "export")


def test_stream_import_errors_name_hf_tensors():
    rules, shapes, state = small_llama()
    hf_shapes = w.export_shapes(rules, shapes)
    hf = dict(w.convert_stream(rules, state, "export"))
    del hf["lm_head.weight"]
    with pytest.raises(ConversionError, match=r"^lm_head\.weight: missing"):  # untied: lm_head required
        w.convert_stream(rules, hf, "import", hf_shapes)
    hf = dict(w.convert_stream(rules, state, "export"))
    hf["model.layers.0.self_attn.k_proj.weight"] = hf["model.layers.0.self_attn.k_proj.weight"].double()
    with pytest.raises(ConversionError, match=r"dtypes differ"):
        list(w.convert_stream(rules, hf, "import", hf_shapes))


@pytest.mark.parametrize("has_head", [False, True])
@pytest.mark.parametrize("equal", [False, True])
def test_tied_embedding_matrix(has_head, equal):
    rules, shapes, state = small_llama(tied=True)
    hf_shapes = w.export_shapes(rules, shapes)
    assert "lm_head.weight" not in hf_shapes
    hf = dict(w.convert_stream(rules, state, "export", shapes))
    assert "lm_head.weight" not in hf
    if has_head:
        emb = hf["model.embed_tokens.weight"]
        hf["lm_head.weight"] = emb.clone() if equal else emb + 1
    if has_head and not equal:
        with pytest.raises(ConversionError, match=r"^lm_head\.weight: the model is tied"):
            list(w.convert_stream(rules, hf, "import", hf_shapes))
        return
    back = dict(w.convert_stream(rules, hf, "import", hf_shapes))
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)
    # an output.weight in a tied native state is an extra tensor
    with pytest.raises(ConversionError, match=r"^output\.weight: not claimed"):
        w.convert_stream(rules, {**state, "output.weight": state["embedding.weight"]}, "export")


def test_transform_rejection_names_the_tensor():
    rule = w.split_qkv("layers.0.attn.qkv.weight", ("q", "k", "v"), heads=4, kv_heads=2, head_dim=6, rotary_dim=4)
    with pytest.raises(ConversionError, match=r"^layers\.0\.attn\.qkv\.weight: qkv: expected 48 rows"):
        rule.export([torch.zeros(47, 3)])
    with pytest.raises(ConversionError, match=r"^layers\.0\.attn\.qkv\.weight: no shape"):
        w.export_shapes([rule], {})


def test_walk_layers_prefixes_and_claims():
    rules = w.walk_layers([None, None], lambda i, _: [w.rename("a.weight", "b.weight")])
    assert w.claimed_names(rules, "native") == ["layers.0.a.weight", "layers.1.a.weight"]
    assert w.claimed_names(rules, "hf") == ["model.layers.0.b.weight", "model.layers.1.b.weight"]
    tied = w.embedding_and_head(True)
    assert w.claimed_names(tied, "hf") == ["model.embed_tokens.weight", "lm_head.weight"]
    assert w.claimed_names(tied, "native") == ["embedding.weight"]


def test_requires_grad_inputs_give_plain_outputs():
    p = torch.nn.Parameter(torch.randn(4, 3))
    (out,) = w.rename("a", "b").export([p])
    assert not out.requires_grad and torch.equal(out, p.detach())
    assert out.untyped_storage().data_ptr() != p.untyped_storage().data_ptr()


def test_copy_false_passes_renames_through_but_never_shares_between_outputs():
    x = torch.randn(6, 3)
    (same,) = w.rename("a", "b").export([x], copy=False)
    assert same.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    gate, up = w.split_gate_up("fc1", ("g", "u")).export([x], copy=False)
    assert_no_sharing([gate, up], [])  # chunk views are materialised: each output owns its bytes
    rules, shapes, state = small_llama()
    hf = dict(w.convert_stream(rules, state, "export", shapes, copy=False))
    back = dict(w.convert_stream(rules, hf, "import", copy=False))
    assert all(torch.equal(back[n], state[n]) for n in state)
    assert_no_sharing(list(hf.values()), [])


def test_import_blocks_are_the_inputs_where_the_import_only_concatenates():
    gate, up = torch.randn(3, 4), torch.randn(3, 4)
    ((blocks, shape),) = w.split_gate_up("fc1", ("g", "u")).import_blocks([gate, up])
    assert blocks[0] is gate and blocks[1] is up and shape == (6, 4)
    experts = [torch.randn(2, 5) for _ in range(6)]
    ((blocks, shape),) = w.experts("fc1", "fc2", experts=3, fc1=("{e}.w1", "{e}.w3"), fc2="{e}.w2")[0].import_blocks(experts)
    assert all(b is x for b, x in zip(blocks, experts)) and shape == (3, 4, 5)
    assert w.rename("a", "b").import_blocks([gate]) is None  # nothing to assemble: the rule runs as usual
    assert w.norm("a", "b", offset=1.0).import_blocks([gate]) is None
    assert w.embedding_and_head(True)[0].import_blocks([gate]) is None  # a rule with its own run()
    with pytest.raises(ConversionError, match="g, u: chunk: the 2 parts differ"):
        w.split_gate_up("fc1", ("g", "u")).import_blocks([gate, torch.randn(2, 4)])


def test_stream_yields_parts_unassembled_and_uncloned_on_request():
    rules, shapes, state = small_llama()
    made = []

    def blocks(parts, shape):
        made.append(len(parts))
        return assemble(parts, shape)

    hf = dict(w.convert_stream(rules, state, "export", shapes, copy=False, blocks=blocks))
    assert hf.keys() == dict(w.convert_stream(rules, state, "export", shapes)).keys()
    assert set(made) == {1}  # an export is never a concatenation of its inputs
    gate, up = w.split_gate_up("fc1", ("g", "u")).run_views("export", [state["layers.0.mlp.fc1.weight"]])
    assert gate.untyped_storage().data_ptr() == up.untyped_storage().data_ptr()  # views, no clone
    assert w.embedding_and_head(True)[0].run_views("export", [gate]) is None  # a rule with its own run()
    made.clear()
    back = dict(w.convert_stream(rules, hf, "import", copy=False, blocks=blocks))
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)
    assert sorted(made, reverse=True)[:4] == [3 * 2, 3 * 2, 2, 2]  # per layer: qkv by kv group, fc1 = [gate; up]
    with pytest.raises(ValueError, match="copy=False"):
        w.convert_stream(rules, hf, "import", blocks=blocks)
