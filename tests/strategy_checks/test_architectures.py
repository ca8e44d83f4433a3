"""Meta-tests of the per-architecture strategy modules.

Every module under ``strategies/`` that defines ``native_configs`` is checked for validity and
round trip (so a new architecture is covered without new test code); the Llama-family modules
written with the framework also get their architecture's constraints and transformers' acceptance
checked here.
"""
from __future__ import annotations

from collections import Counter

import pytest

import native
import strategies
from properties.common import hf_config
from strategies import building_blocks as bb
from strategies._hf_common import transformers_warns

from strategy_sampling import cached_sample, minimal

ARCHS = strategies.architectures()
LLAMA_FAMILY = ["llama", "mistral", "qwen2", "qwen3"]
N = 120


def _n(arch: str) -> int:
    """Sample size: the Llama family's constraint tests below need N; others are checked on 40."""
    return N if arch in LLAMA_FAMILY else 40


def layers(cfg):
    return cfg.decoder.layers()


def test_lookup():
    assert set(LLAMA_FAMILY) <= set(ARCHS)
    assert strategies.for_architecture("llama").MODEL_TYPE == "llama"
    with pytest.raises(KeyError, match="no strategy module"):
        strategies.for_architecture("no_such_model")
    with pytest.raises(KeyError):
        strategies.for_architecture("building_blocks")


@pytest.mark.parametrize("arch", ARCHS)
def test_native_configs_are_valid(arch):
    for cfg in cached_sample(arch, _n(arch)):
        assert isinstance(cfg, native.ModelConfig)
        assert native.ModelConfig.from_dict(cfg.to_dict()) == cfg
        native.state_shapes(cfg)


@pytest.mark.parametrize("arch", ARCHS)
def test_native_configs_stay_forward_sized(arch):
    for cfg in cached_sample(arch, _n(arch)):
        assert cfg.hidden_size <= bb.MAX_HIDDEN and cfg.vocab_size <= bb.MAX_VOCAB
        assert cfg.num_layers <= 6  # 3 by default; layer patterns such as Gemma3's 5:1 need more
        assert bb.min_forward_length(cfg) <= bb.MAX_MAX_POSITION + 1


# ---------------------------------------------------------------------------- Llama family rules
def _common_llama_family(cfg):
    eps = {cfg.final_norm.eps}
    for b in layers(cfg):
        assert b.placement == "pre" and b.norm.kind == "rms_norm"
        assert isinstance(b.mlp, native.MLPConfig) and b.mlp.gated
        a = b.attention
        assert a.rotary.kind in ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
        assert a.rotary.fraction == 1.0
        assert a.softmax_scale is None and a.logit_softcap is None
        eps.add(b.norm.eps)
        if a.qk_norm is not None:
            eps.add(a.qk_norm.eps)
    assert len(eps) == 1, "one rms_norm_eps for every norm"
    assert cfg.embeddings.multiplier is None and cfg.head.final_softcap is None
    assert cfg.final_norm == layers(cfg)[0].norm


def _biases(a):
    return (a.q_bias, a.k_bias, a.v_bias, a.o_bias)


def _suffix_windows(cfg):
    windows = [b.attention.window for b in layers(cfg)]
    sliding = [w is not None for w in windows]
    assert sliding == sorted(sliding), f"windows not a suffix: {windows}"
    assert len({w for w in windows if w is not None}) <= 1


def _one_block_family(arch: str) -> tuple:
    """The sampled configs of a Llama-family architecture with one block kind for every layer."""
    configs = cached_sample(arch, N)
    for cfg in configs:
        _common_llama_family(cfg)
        assert len(cfg.decoder.blocks) == 1
    return configs


def test_llama_constraints():
    configs = _one_block_family("llama")
    for a in (cfg.decoder.blocks[0].attention for cfg in configs):
        assert _biases(a) in {(False,) * 4, (True,) * 4} and a.qk_norm is None and a.window is None
    assert all(cfg.hidden_size % cfg.decoder.blocks[0].attention.heads == 0 for cfg in configs)
    kinds = Counter(cfg.decoder.blocks[0].attention.rotary.kind for cfg in configs)
    assert set(kinds) == {"default", "linear", "dynamic", "llama3", "yarn", "longrope"}, kinds
    assert {cfg.decoder.blocks[0].mlp.bias for cfg in configs} == {False, True}
    assert {cfg.decoder.blocks[0].mlp.activation for cfg in configs} == set(native.feedforward_config.ACTIVATIONS)
    assert {cfg.head.tied for cfg in configs} == {False, True}
    assert {_biases(cfg.decoder.blocks[0].attention) for cfg in configs} == {(False,) * 4, (True,) * 4}
    assert any(cfg.hidden_size != a.heads * a.head_dim for cfg in configs for a in [cfg.decoder.blocks[0].attention])


def test_mistral_constraints():
    configs = _one_block_family("mistral")
    for b in (cfg.decoder.blocks[0] for cfg in configs):
        assert _biases(b.attention) == (False,) * 4 and not b.mlp.bias
    assert {cfg.decoder.blocks[0].attention.window is None for cfg in configs} == {True, False}
    assert any(cfg.hidden_size % cfg.decoder.blocks[0].attention.heads for cfg in configs)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_constraints(arch):
    configs = cached_sample(arch, N)
    for cfg in configs:
        _common_llama_family(cfg)
        _suffix_windows(cfg)
        for b in layers(cfg):
            a = b.attention
            assert not b.mlp.bias
            if arch == "qwen2":
                assert _biases(a) == (True, True, True, False) and a.qk_norm is None
            else:
                assert _biases(a) in {(False,) * 4, (True,) * 4}
                assert a.qk_norm == native.RMSNormConfig(cfg.final_norm.eps) and a.qk_norm_scope == "head"
    mixed = [cfg for cfg in configs if len({b.attention.window for b in layers(cfg)}) > 1]
    assert mixed, "some configs slide on some layers only"
    assert any(all(b.attention.window for b in layers(cfg)) for cfg in configs), "all layers sliding"


def test_qwen2_mixed_windows_shrink_to_two_layers_last_sliding():
    qwen2 = strategies.for_architecture("qwen2")
    cfg = minimal(qwen2.native_configs(), lambda c: len({b.attention.window for b in layers(c)}) > 1)
    assert [b.attention.window for b in layers(cfg)] == [None, 1]


# --------------------------------------------------------------------- accepted by transformers
def _rope_parameters(r) -> dict:
    out = {"rope_type": r.kind, "rope_theta": r.theta}
    if r.kind in ("linear", "dynamic", "llama3"):
        out["factor"] = r.factor
    if r.kind == "llama3":
        out.update(low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor,
                   original_max_position_embeddings=r.original_max_position_embeddings)
    if r.kind == "yarn":
        out.update(factor=r.factor, original_max_position_embeddings=r.original_max_position_embeddings,
                   beta_fast=r.beta_fast, beta_slow=r.beta_slow, truncate=r.truncate)
        out.update({k: getattr(r, k) for k in ("mscale", "mscale_all_dim", "attention_factor")
                    if getattr(r, k) is not None})
    if r.kind == "longrope":
        out.update(short_factor=list(r.short_factor), long_factor=list(r.long_factor), factor=r.factor,
                   original_max_position_embeddings=r.original_max_position_embeddings)
        if r.attention_factor is not None:
            out["attention_factor"] = r.attention_factor
    return out


def _hf_kwargs(arch: str, cfg) -> dict:
    """A hand-written export, independent of the converters, just enough to ask transformers."""
    b = cfg.decoder.layer(0)
    a = b.attention
    kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=b.mlp.intermediate,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                  head_dim=a.head_dim, max_position_embeddings=cfg.max_position_embeddings,
                  rms_norm_eps=b.norm.eps, tie_word_embeddings=cfg.head.tied,
                  hidden_act={"gelu_tanh": "gelu_pytorch_tanh"}.get(b.mlp.activation, b.mlp.activation),
                  rope_parameters=_rope_parameters(a.rotary))
    if arch == "llama":
        kwargs.update(attention_bias=a.q_bias, mlp_bias=b.mlp.bias)
    if arch == "mistral":
        kwargs.update(sliding_window=a.window)
    if arch in ("qwen2", "qwen3"):
        windows = [x.attention.window for x in layers(cfg)]
        first = next((i for i, w in enumerate(windows) if w is not None), None)
        kwargs.update(use_sliding_window=first is not None, sliding_window=windows[first] if first is not None else None,
                      max_window_layers=first if first is not None else cfg.num_layers)
    if arch == "qwen3":
        kwargs.update(attention_bias=a.q_bias)
    return kwargs


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
def test_transformers_accepts_the_configs_without_warnings(arch):
    for cfg in cached_sample(arch, N)[:40]:
        hf = {"model_type": arch, **_hf_kwargs(arch, cfg)}
        messages = transformers_warns(hf)
        assert not messages, (cfg.to_json(), messages)
        if arch in ("qwen2", "qwen3"):
            expected = ["sliding_attention" if b.attention.window else "full_attention" for b in layers(cfg)]
            assert hf_config(hf).layer_types == expected