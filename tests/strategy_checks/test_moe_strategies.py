"""Meta-tests of the MoE strategy modules (mixtral, qwen2_moe, qwen3_moe): the native configs keep to
what the format can express and reach every layer mix; the HF dicts are valid for transformers'
config class (no warning) and reach every encoding the converters must read; every refusal case is
refused naming its field; the simplest config is small."""
from __future__ import annotations

from functools import lru_cache

import pytest
from hypothesis import strategies as st

import native
from converters import ConversionError
from converters.mixtral import MixtralConverter
from converters.qwen2_moe import Qwen2MoeConverter
from converters.qwen3_moe import Qwen3MoeConverter
from strategies import mixtral, qwen2_moe, qwen3_moe
from strategies._hf_common import transformers_warns

from strategy_sampling import sample, simplest

MODULES = {"mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe}
N = 100


@lru_cache(maxsize=None)
def drawn(arch: str, kind: str, n: int = N) -> tuple:
    """``n`` values of ``strategies.<arch>.<kind>()``, drawn once per session."""
    return tuple(sample(getattr(MODULES[arch], kind)(), n))


def _sparse(cfg):
    return [isinstance(b.mlp, native.MoEConfig) for b in cfg.decoder.layers()]


def _windows(cfg):
    return [b.attention.window for b in cfg.decoder.layers()]


@pytest.mark.parametrize("arch", sorted(MODULES))
def test_native_configs_keep_to_the_format(arch):
    for cfg in drawn(arch, "native_configs"):
        blocks = cfg.decoder.layers()
        moes = {b.mlp for b in blocks if isinstance(b.mlp, native.MoEConfig)}
        denses = {b.mlp for b in blocks if isinstance(b.mlp, native.MLPConfig)}
        assert len(moes) <= 1 and len(denses) <= 1, "one set of MoE keys and one intermediate_size"
        assert len({m.activation for m in moes | denses}) == 1, "one hidden_act"
        assert len({w for w in _windows(cfg) if w is not None}) <= 1, "one sliding_window"
        for moe in moes:
            if arch == "qwen2_moe":
                assert moe.shared_intermediate is not None and moe.shared_gate
            else:
                assert moe.shared_intermediate is None and not moe.shared_gate
            if arch == "mixtral":
                assert moe.normalize_top_k
        for b in blocks:
            a = b.attention
            assert b.placement == "pre" and a.rotary.kind != "none" and a.rotary.fraction == 1.0
            assert not (a.rotary.kind == "dynamic" and a.head_dim == 2), "transformers cannot build it"
        if arch == "mixtral":
            assert all(_sparse(cfg)) and len(set(_windows(cfg))) == 1
        if arch == "qwen3_moe":
            assert len(set(_windows(cfg))) == 1
            assert all(b.attention.qk_norm is not None for b in blocks)


@pytest.mark.parametrize("arch", ["qwen2_moe", "qwen3_moe"])
def test_native_configs_reach_every_layer_mix(arch):
    seen = set()
    for cfg in drawn(arch, "native_configs"):
        sparse = _sparse(cfg)
        seen.add("all-sparse" if all(sparse) else "all-dense" if not any(sparse) else "mixed")
        windows = _windows(cfg)
        if any(w is not None for w in windows):
            seen.add("some-windows" if None in windows else "all-windows")
        if cfg.decoder.layer(0).attention.q_bias:
            seen.add("biases")
        if cfg.head.tied:
            seen.add("tied")
    expected = {"all-sparse", "all-dense", "mixed", "all-windows", "biases", "tied"}
    if arch == "qwen2_moe":
        expected.add("some-windows")
    assert expected <= seen, expected - seen


@pytest.mark.parametrize("arch", sorted(MODULES))
def test_hf_configs_are_valid_for_transformers(arch):
    for hf in drawn(arch, "hf_configs")[:60]:
        messages = transformers_warns(hf)
        assert not messages, (hf, messages)


def _hf_features(arch, hf):
    out = {"v4-rope" if "rope_theta" in hf else "v5-rope"}
    if "num_experts" in hf and arch != "qwen2_moe":
        out.add("experts-alias")
    if "head_dim" not in hf:
        out.add("head-dim-absent")
    elif hf["head_dim"] is None:
        out.add("head-dim-null")
    if hf.get("num_experts", hf.get("num_local_experts")) == 0:
        out.add("no-experts")
    if hf.get("decoder_sparse_step", 1) > 1:
        out.add("sparse-step")
    if hf.get("mlp_only_layers"):
        out.add("mlp-only-layers")
    if "layer_types" in hf:
        out.add("explicit-layer-types")
    if hf.get("use_sliding_window"):
        out.add("sliding")
    if "bos_token_id" in hf or "eos_token_id" in hf:
        out.add("token-ids")
    if "torch_dtype" in hf:
        out.add("file-keys")
    return out


@pytest.mark.parametrize("arch", sorted(MODULES))
def test_hf_configs_reach_every_encoding(arch):
    seen = set()
    for hf in drawn(arch, "hf_configs"):
        seen |= _hf_features(arch, hf)
    expected = {"v4-rope", "v5-rope", "head-dim-absent", "token-ids", "file-keys"}
    expected |= {"mixtral": {"experts-alias", "head-dim-null"},
                 "qwen2_moe": {"no-experts", "sparse-step", "mlp-only-layers", "explicit-layer-types", "sliding"},
                 "qwen3_moe": {"experts-alias", "no-experts", "sparse-step", "mlp-only-layers", "sliding"}}[arch]
    assert expected <= seen, expected - seen


@pytest.mark.parametrize("arch", sorted(MODULES))
def test_unrepresentable_configs_draw_every_breaker(arch):
    expected = {"placement", "rotary", "fraction", "norm", "multiplier", "final_softcap", "softmax_scale",
                "logit_softcap"}
    expected |= {"mixtral": {"mlp.kind", "normalize_top_k", "shared_intermediate", "q_bias", "o_bias", "qk_norm",
                             "attention.window", "experts"},
                 "qwen2_moe": {"o_bias", "k_bias", "shared_gate", "shared_intermediate", "experts", "gated", "bias",
                               "activation", "attention.window", "qk_norm"},
                 "qwen3_moe": {"o_bias", "qk_norm", "qk_norm_scope", "shared_intermediate", "top_k", "gated", "bias",
                               "activation", "attention.window"}}[arch]
    assert set(MODULES[arch].BREAKERS) == expected
    fields = {field for _, field in drawn(arch, "unrepresentable_configs")}
    assert len(fields) >= len(expected) // 2, "the field is drawn first, so a sample sees most of them"


CONVERTERS = {"mixtral": MixtralConverter(), "qwen2_moe": Qwen2MoeConverter(), "qwen3_moe": Qwen3MoeConverter()}


@st.composite
def _broken_by(draw, arch: str, field: str):
    module = MODULES[arch]
    cfg = draw(module.native_configs())
    return module.BREAKERS[field](cfg, draw(st.integers(0, cfg.num_layers - 1)), draw)


@pytest.mark.parametrize("arch, field", [(a, f) for a in sorted(MODULES) for f in sorted(MODULES[a].BREAKERS)])
def test_every_breaker_is_refused_naming_its_field(arch, field):
    """Each breaker, on many configs (the ones it must first extend included), gives a config the
    converter refuses with a ConversionError naming the field."""
    for cfg in sample(_broken_by(arch, field), 15):
        with pytest.raises(ConversionError) as refusal:
            CONVERTERS[arch].export_config(cfg)
        assert field in str(refusal.value), (field, str(refusal.value))


@pytest.mark.parametrize("arch", sorted(MODULES))
def test_simplest_native_config_is_small(arch):
    cfg = simplest(MODULES[arch].native_configs())
    assert cfg.num_layers == 1 and cfg.hidden_size == 8 and all(_sparse(cfg))
    moe = cfg.decoder.layer(0).mlp
    assert (moe.experts, moe.top_k) == (1, 1)
