"""Meta-tests of ``strategies.native_configs``: valid, covering, shrinking."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from strategies import building_blocks as bb
from strategies import native_configs

from strategy_sampling import cached_sample, minimal, sample, simplest

N = 400  # one shared, seeded sample of the generic strategy


@pytest.fixture(scope="module")
def configs():
    return cached_sample("generic", N)


def blocks(cfg):
    return cfg.decoder.layers()


# ------------------------------------------------------------------------------------- validity
def test_configs_are_valid_and_round_trip(configs):
    for cfg in configs:
        assert isinstance(cfg, native.ModelConfig)
        assert native.ModelConfig.from_dict(cfg.to_dict()) == cfg
        assert native.ModelConfig.from_json(cfg.to_json()) == cfg
        native.state_shapes(cfg)  # the layout accepts it


def test_sizes_stay_small(configs):
    for cfg in configs:
        assert bb.MIN_HIDDEN <= cfg.hidden_size <= bb.MAX_HIDDEN
        assert bb.MIN_VOCAB <= cfg.vocab_size <= bb.MAX_VOCAB
        assert 1 <= cfg.num_layers <= bb.MAX_LAYERS
        assert cfg.max_position_embeddings <= bb.MAX_MAX_POSITION
        for block in blocks(cfg):
            a = block.attention
            assert a.head_dim <= bb.MAX_HEAD_DIM
            assert a.window is None or a.window <= bb.MAX_WINDOW
            original = getattr(a.rotary, "original_max_position_embeddings", None)
            assert original is None or bb.MIN_ORIGINAL <= original <= min(bb.MAX_ORIGINAL, cfg.max_position_embeddings)


# ------------------------------------------------------------------------------------- coverage
def test_every_rotary_kind_and_fraction(configs):
    kinds = Counter(b.attention.rotary.kind for cfg in configs for b in blocks(cfg))
    assert set(kinds) == set(native.rotary_config.ROTARY_KINDS), kinds
    fractions = {b.attention.rotary.fraction < 1 for cfg in configs for b in blocks(cfg)
                 if b.attention.rotary.kind != "none"}
    assert fractions == {True, False}


def test_every_bias_pattern(configs):
    patterns = {(a.q_bias, a.k_bias, a.v_bias, a.o_bias)
                for cfg in configs for a in (b.attention for b in blocks(cfg))}
    assert len(patterns) == 16, sorted(patterns)


def test_every_placement_norm_and_qk_norm(configs):
    layers = [b for cfg in configs for b in blocks(cfg)]
    assert {b.placement for b in layers} == set(native.config.PLACEMENTS)
    assert {(b.norm.kind, getattr(b.norm, "bias", None)) for b in layers} == {
        ("rms_norm", None), ("layer_norm", True), ("layer_norm", False)}
    assert {None if b.attention.qk_norm is None else b.attention.qk_norm_scope for b in layers} == {None, "head", "full"}


def test_dense_moe_shared_experts_and_activations(configs):
    layers = [b for cfg in configs for b in blocks(cfg)]
    moes = [b.mlp for b in layers if isinstance(b.mlp, native.MoEConfig)]
    mlps = [b.mlp for b in layers if isinstance(b.mlp, native.MLPConfig)]
    assert moes and mlps
    assert {m.shared_intermediate is not None for m in moes} == {True, False}
    assert any(m.shared_gate for m in moes)
    assert {m.experts for m in moes} >= {1, 2, 3}
    assert any(m.top_k == m.experts for m in moes) and any(m.top_k < m.experts for m in moes)
    assert {m.gated for m in mlps} == {True, False} and {m.bias for m in mlps} == {True, False}
    assert {m.activation for m in mlps} == set(native.feedforward_config.ACTIVATIONS)
    assert any(cfg for cfg in configs if {type(b.mlp) for b in blocks(cfg)} == {native.MLPConfig, native.MoEConfig})


def test_head_layouts(configs):
    attn = [b.attention for cfg in configs for b in blocks(cfg)]
    assert any(a.kv_heads == 1 and a.heads > 1 for a in attn), "MQA"
    assert any(a.kv_heads == a.heads > 1 for a in attn), "MHA"
    assert any(1 < a.kv_heads < a.heads for a in attn), "GQA"
    assert any(a.head_dim % 2 == 1 for a in attn), "odd head_dim (partial rotary)"
    assert any(cfg.hidden_size != a.heads * a.head_dim for cfg in configs for a in (b.attention for b in blocks(cfg)))


def test_awkward_sizes(configs):
    assert any(cfg.hidden_size % 2 == 1 for cfg in configs)
    assert any(cfg.vocab_size % 8 != 0 for cfg in configs)
    assert {cfg.num_layers for cfg in configs} == set(range(1, bb.MAX_LAYERS + 1))


def test_windows_and_heterogeneous_layers(configs):
    def windows(cfg):
        return [b.attention.window for b in blocks(cfg)]

    assert any(all(w is None for w in windows(c)) for c in configs)
    assert any(c.num_layers > 1 and len(set(windows(c))) == 1 and windows(c)[0] for c in configs), "uniform"
    assert any(None in windows(c) and any(windows(c)) for c in configs), "some layers sliding"
    assert any(len(c.decoder.blocks) > 1 and len({b.attention.rotary for b in c.decoder.blocks}) > 1 for c in configs)
    assert any(len({b.attention.heads for b in c.decoder.blocks}) > 1 for c in configs), "per-layer head shape"


def test_head_embedding_and_caps(configs):
    assert {c.head.tied for c in configs} == {True, False}
    assert any(c.head.final_softcap for c in configs)
    multipliers = [c.embeddings.multiplier for c in configs]
    assert None in multipliers
    assert any(m is not None and m == native.config.default_embedding_multiplier(c.hidden_size)
               for m, c in zip(multipliers, configs))
    attn = [b.attention for c in configs for b in blocks(c)]
    assert any(a.logit_softcap for a in attn) and any(a.softmax_scale for a in attn)
    assert any(c.final_norm != c.decoder.blocks[0].norm for c in configs)


def test_rotary_parameters_reach_their_options(configs):
    rot = [b.attention.rotary for c in configs for b in blocks(c)]
    yarn = [r for r in rot if r.kind == "yarn"]
    longrope = [r for r in rot if r.kind == "longrope"]
    assert {r.factor is None for r in yarn} == {True, False}
    assert {r.factor is None for r in longrope} == {True, False}
    assert any(r.mscale is not None and r.mscale_all_dim is not None for r in yarn)
    assert {r.truncate for r in yarn} == {True, False}
    assert any(r.theta != 10000.0 for r in rot if r.kind != "none")
    assert any(len(r.short_factor) > 1 for r in longrope)


def test_layer_pattern_kinds_are_reached():
    patterns = sample(st.integers(1, 6).flatmap(bb.layer_patterns), 300)
    kinds = {p.kind for p in patterns}
    assert kinds == set(bb.LAYER_PATTERN_KINDS)
    for p in patterns:
        if p.kind != "arbitrary":
            assert p.flags == bb.pattern_flags(p.kind, p.num_layers, p.param)
    # the rules of the HF models they stand for
    assert bb.pattern_flags("every_k", 6, 6) == (True,) * 5 + (False,)  # Gemma3 5:1
    assert bb.pattern_flags("alternating", 4, 0) == (True, False, True, False)  # Gemma2
    assert bb.pattern_flags("suffix", 4, 1) == (False, True, True, True)  # Qwen2 max_window_layers=1


# -------------------------------------------------------------------------------------- shrinking
def _minimal_config():
    block = native.BlockConfig(
        placement="pre", norm=native.RMSNormConfig(1e-5),
        attention=native.AttentionConfig(heads=1, kv_heads=1, head_dim=2, rotary=native.NoRotary()),
        mlp=native.MLPConfig(intermediate=1))
    return native.ModelConfig(
        hidden_size=bb.MIN_HIDDEN, max_position_embeddings=bb.MIN_MAX_POSITION,
        embeddings=native.EmbeddingConfig(vocab_size=bb.MIN_VOCAB),
        decoder=native.DecoderConfig.from_layers([block]), final_norm=native.RMSNormConfig(1e-5))


def test_shrinks_to_the_minimal_config():
    assert minimal(native_configs()) == _minimal_config()
    assert simplest(native_configs()) == _minimal_config()  # the first example generated, too


def test_a_window_shrinks_to_one_small_layer():
    cfg = minimal(native_configs(), lambda c: any(b.attention.window for b in c.decoder.blocks))
    assert cfg.num_layers == 1 and cfg.decoder.layer(0).attention.window == 1
    assert cfg.hidden_size == bb.MIN_HIDDEN and cfg.vocab_size == bb.MIN_VOCAB


def test_moe_is_simplest_at_its_smallest():
    cfg = simplest(native_configs(feed_forwards=("moe",)))
    moe = cfg.decoder.layer(0).mlp
    assert (moe.experts, moe.top_k, moe.intermediate, moe.shared_intermediate) == (1, 1, 1, None)
    assert cfg.num_layers == 1


def test_each_rotary_kind_is_simplest_at_the_smallest_head():
    for kind in bb.ROTARY_KINDS:
        cfg = simplest(native_configs(rotary_kinds=(kind,)))
        rotary = cfg.decoder.layer(0).attention.rotary
        assert rotary.kind == kind and cfg.decoder.layer(0).attention.head_dim == 2
        if kind == "longrope":
            assert len(rotary.short_factor) == 1


# ------------------------------------------------------------------------------------ constraints
def test_constraints_are_honoured():
    strat = native_configs(placements=("post",), norm_kinds=("layer",), rotary_kinds=("yarn",),
                           rotary_fractions=("full",), attention_biases=bb.BIAS_QKV, feed_forwards=("moe",),
                           windows=("none",), tied=(True,), embedding_multipliers=("sqrt_hidden",),
                           shared_eps=True, final_norm="same", varying=(), qk_norms=("none",))
    for cfg in sample(strat, 40):
        eps = {cfg.final_norm.eps} | {b.norm.eps for b in cfg.decoder.blocks}
        assert len(eps) == 1
        assert cfg.head.tied
        assert cfg.embeddings.multiplier == native.config.default_embedding_multiplier(cfg.hidden_size)
        assert len(cfg.decoder.blocks) == 1
        b = cfg.decoder.blocks[0]
        assert b.placement == "post" and b.norm.kind == "layer_norm" and b.norm.bias
        assert b.attention.rotary.kind == "yarn" and b.attention.rotary.fraction == 1.0
        assert (b.attention.q_bias, b.attention.k_bias, b.attention.v_bias, b.attention.o_bias) == (True, True, True, False)
        assert isinstance(b.mlp, native.MoEConfig) and b.attention.window is None


def test_hidden_policies():
    for cfg in sample(native_configs(hidden="multiple_of_heads"), 40):
        assert all(cfg.hidden_size % b.attention.heads == 0 for b in cfg.decoder.blocks)
    for cfg in sample(native_configs(hidden="heads_times_head_dim"), 40):
        assert all(cfg.hidden_size == b.attention.heads * b.attention.head_dim for b in cfg.decoder.blocks)
        assert cfg.hidden_size <= bb.MAX_HIDDEN


def test_hf_valid_rotary_parameters():
    strat = native_configs(rotary_kinds=("linear", "dynamic", "llama3", "yarn", "longrope"), hf_valid_rotary=True)
    for cfg in sample(strat, 80):
        for b in cfg.decoder.blocks:
            r = b.attention.rotary
            assert r.factor is not None and r.factor >= 1
            if r.kind == "llama3":
                assert r.original_max_position_embeddings < cfg.max_position_embeddings
            if r.kind == "yarn":
                assert r.original_max_position_embeddings == cfg.max_position_embeddings or \
                    cfg.max_position_embeddings / r.original_max_position_embeddings == r.factor


def test_unknown_choices_are_refused():
    with pytest.raises(ValueError, match="hidden"):
        simplest(native_configs(hidden="square"))
    with pytest.raises(ValueError, match="varying"):
        simplest(native_configs(varying=("everything",)))


# --------------------------------------------------------------------------------- building blocks
@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(3, 16).flatmap(lambda d: st.tuples(st.just(d), bb.rotary_fractions(d))))
def test_rotary_fractions_give_even_positive_dims(pair):
    head_dim, fraction = pair
    rotary_dim = int(head_dim * fraction)
    assert rotary_dim % 2 == 0 and 0 < rotary_dim <= head_dim


@pytest.mark.parametrize("head_dim", range(3, 17))
def test_fraction_for_is_exact(head_dim):
    for rotary_dim in range(2, head_dim, 2):
        assert int(head_dim * bb.fraction_for(rotary_dim, head_dim)) == rotary_dim


def test_min_forward_length_exceeds_windows_originals_and_dynamic_context():
    for cfg in cached_sample("generic", N)[:200]:
        length = bb.min_forward_length(cfg)
        for b in cfg.decoder.blocks:
            a = b.attention
            assert a.window is None or length > a.window
            original = getattr(a.rotary, "original_max_position_embeddings", None)
            assert original is None or length > original
            if a.rotary.kind == "dynamic":
                assert length > cfg.max_position_embeddings
