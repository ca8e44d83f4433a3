"""Strategies for the ``starcoder2`` converter (see converters/starcoder2.py for the format's rules)."""
from __future__ import annotations

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from .generic import native_configs as generic_configs

MODEL_TYPE = "starcoder2"
ARCHITECTURE = "Starcoder2ForCausalLM"


def _configs(use_bias: bool):
    return generic_configs(**{
        **hc.PLAIN, "norm_kinds": ("layer",), "attention_biases": (bb.BIAS_ALL_OR_NOTHING[1 if use_bias else 0],),
        "mlp_biases": (use_bias,), "gated": (False,), "windows": ("none", "uniform"), "tied": (True, False)})


def native_configs() -> st.SearchStrategy[native.ModelConfig]:
    """Pre-norm LayerNorm (with bias) blocks, one ``use_bias`` for q/k/v/o and the plain MLP, any rope
    kind at full rotation, one window for all layers or none."""
    return hc.with_token_ids(st.one_of(_configs(True), _configs(False)).map(hc.hf_buildable))


@st.composite
def hf_configs(draw):
    """Starcoder2Config dicts, v4 and v5 rope forms, with the dropouts real configs carry."""
    hf, layout = draw(hc.hf_sizes(MODEL_TYPE))
    hf.update({
        "hidden_act": draw(bb.choice(("gelu_pytorch_tanh", "gelu", "silu", "relu"))),
        "norm_epsilon": draw(bb.epsilons()),
        "use_bias": draw(st.booleans()),
        "sliding_window": draw(st.one_of(st.none(), bb.windows())),
        **draw(hc.token_ids(hf["vocab_size"])),
    })
    hf.update(draw(hc.optional_keys({
        "tie_word_embeddings": st.booleans(), "attention_dropout": hc.dropouts(),
        "residual_dropout": hc.dropouts(), "embedding_dropout": hc.dropouts(),
        "initializer_range": st.sampled_from([0.018042, 0.02]), "use_cache": st.booleans()})))
    hf.update(draw(hc.file_keys(ARCHITECTURE)))
    params = draw(hc.rope_parameters(layout.head_dim, hf["max_position_embeddings"]))
    hf.update(draw(hc.rope_keys(params, default_scaling=("null",))))
    return hf


def hf_examples() -> list[dict]:
    """A starcoder2-3b-shaped config (v4 keys, window, GQA, tied) scaled down."""
    return [{"model_type": "starcoder2", "architectures": [ARCHITECTURE],
             "attention_dropout": 0.1, "bos_token_id": 0, "eos_token_id": 0, "embedding_dropout": 0.1,
             "hidden_act": "gelu_pytorch_tanh", "hidden_size": 24, "initializer_range": 0.018042,
             "intermediate_size": 96, "max_position_embeddings": 64, "norm_epsilon": 1e-05,
             "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "residual_dropout": 0.1,
             "rope_theta": 999999.4420358813, "sliding_window": 6, "torch_dtype": "bfloat16",
             "transformers_version": "4.37.0.dev0", "use_bias": True, "use_cache": True, "vocab_size": 49}]


REFUSED = ("qk_norm", "mlp_gated_flip", "mlp_bias_flip", "norm_kind", "norm_bias_off", "final_norm_eps",
           "placement", "no_rotary", "partial_rotary", "window_pattern", "multiplier", "final_softcap",
           "logit_softcap", "softmax_scale", "moe", "q_bias_flip", "o_bias_flip")


def unrepresentable_configs() -> st.SearchStrategy[tuple[native.ModelConfig, str]]:
    """``(cfg, field)``: an accepted config with one feature StarCoder2 cannot hold (a q/k norm, a
    gated MLP, an MLP bias apart from the attention biases, RMSNorm or a bias-free LayerNorm, another
    placement, partial or no rotary, per-layer windows, a lone q or o bias, two norm epsilons, an
    embedding multiplier, softcaps, a softmax scale, MoE), and the text the refusal must contain."""
    return mu.unrepresentable(native_configs(), REFUSED, placements=("pre",))


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
