"""Strategies for the ``gpt_neox`` converter (see converters/gpt_neox.py for the format's rules)."""
from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from .generic import native_configs as generic_configs

MODEL_TYPE = "gpt_neox"
ARCHITECTURE = "GPTNeoXForCausalLM"
DEFAULT_ROTARY_PCT = 0.25


def native_configs() -> st.SearchStrategy[native.ModelConfig]:
    """Parallel or sequential pre-norm LayerNorm (with bias) blocks, multi-head with ``hidden = heads *
    head_dim``, q/k/v/o biases all on or all off, a plain biased MLP, any rope kind with full or
    partial rotation, no window."""
    return hc.with_token_ids(generic_configs(**{
        **hc.PLAIN, "hidden": "heads_times_head_dim", "max_group": 1, "placements": ("parallel", "pre"),
        "norm_kinds": ("layer",), "rotary_fractions": ("partial", "full"), "attention_biases": bb.BIAS_ALL_OR_NOTHING,
        "mlp_biases": (True,), "gated": (False,)}).map(hc.hf_buildable))


@st.composite
def hf_configs(draw):
    """GPTNeoXConfig dicts: v5 (``rope_parameters``) or legacy (``rotary_emb_base``, ``rotary_pct``,
    ``rope_scaling``), each rope key present or left to its default where that default is valid."""
    layouts = bb.head_layouts(max_group=1, max_q_width=bb.MAX_HIDDEN, even_head_dim=False, min_head_dim=3)
    hf, layout = draw(hc.hf_sizes(MODEL_TYPE, hidden=("heads_times_head_dim",), layouts=layouts, kv_heads="never"))
    hf["layer_norm_eps"] = draw(bb.epsilons())
    params = draw(hc.rope_parameters(layout.head_dim, hf["max_position_embeddings"], fractions=("partial", "full")))
    hf.update(draw(hc.optional_keys({
        "hidden_act": bb.choice(("gelu", "gelu_pytorch_tanh", "silu", "relu")),
        "use_parallel_residual": st.booleans(), "attention_bias": st.booleans(), "tie_word_embeddings": st.booleans(),
        "hidden_dropout": hc.dropouts(), "attention_dropout": hc.dropouts(), "classifier_dropout": hc.dropouts(),
        "initializer_range": st.sampled_from([0.02]), "use_cache": st.booleans(), "is_decoder": st.just(False)})))
    hf.update(draw(hc.token_ids(hf["vocab_size"])) if draw(st.booleans()) else {})
    hf.update(draw(hc.file_keys(ARCHITECTURE)))
    default_pct = params["partial_rotary_factor"] == DEFAULT_ROTARY_PCT
    if draw(st.booleans()):  # v5
        if default_pct and draw(st.booleans()):
            del params["partial_rotary_factor"]  # GPTNeoXConfig fills in rotary_pct's default
        hf["rope_parameters"] = params
        return hf
    # legacy: theta and fraction as rotary_emb_base / rotary_pct, the rest in rope_scaling
    theta, pct = params.pop("rope_theta"), params.pop("partial_rotary_factor")
    kind = params.pop("rope_type")
    if theta != 10000.0 or draw(st.booleans()):
        hf["rotary_emb_base"] = theta
    if not default_pct or draw(st.booleans()):
        hf["rotary_pct"] = pct
    if kind != "default":
        hf["rope_scaling"] = {draw(st.sampled_from(["type", "rope_type"])): kind, **params}
    return hf


def hf_examples() -> list[dict]:
    """A Pythia-70m-shaped legacy config scaled down (rotary_pct 0.25, rotary_emb_base, untied), and
    transformers' default."""
    pythia = {"architectures": [ARCHITECTURE], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
              "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
              "max_position_embeddings": 64, "model_type": "gpt_neox", "num_attention_heads": 4,
              "num_hidden_layers": 2, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
              "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
              "use_parallel_residual": True, "vocab_size": 50}
    return [pythia]


REFUSED = ("qk_norm", "mlp_gated_flip", "mlp_bias_flip", "norm_kind", "norm_bias_off", "final_norm_eps",
           "placement", "no_rotary", "window", "multiplier", "final_softcap", "logit_softcap", "softmax_scale",
           "moe", "q_bias_flip", "o_bias_flip")


@st.composite
def _attention_shape(draw):
    """GQA, or a head size other than ``hidden // heads``: GPT-NeoX has neither key."""
    cfg = draw(native_configs())
    a = cfg.decoder.blocks[0].attention
    if draw(st.booleans()):
        heads = 2 * a.heads
        return dataclasses.replace(mu.every_attention(cfg, heads=heads), hidden_size=heads * a.head_dim), "kv_heads"
    return dataclasses.replace(cfg, hidden_size=cfg.hidden_size + draw(st.integers(1, 3))), "head_dim"


def unrepresentable_configs() -> st.SearchStrategy[tuple[native.ModelConfig, str]]:
    """``(cfg, field)``: an accepted config with one feature GPT-NeoX cannot hold (GQA, a free
    ``head_dim``, a q/k norm, a gated or bias-free MLP, RMSNorm or a bias-free LayerNorm, post/
    sandwich placement, no rotary, a window, a lone q or o bias, two norm epsilons, an embedding
    multiplier, softcaps, a softmax scale, MoE), and the text the refusal must contain."""
    return st.one_of(mu.unrepresentable(native_configs(), REFUSED, placements=("parallel", "pre")), _attention_shape())


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
