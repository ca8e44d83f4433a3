"""Strategies for the ``olmo2`` converter (see converters/olmo2.py for the format's rules)."""
from __future__ import annotations

from hypothesis import strategies as st

import native

from . import _hf_common as hc
from . import _mutations as mu
from . import building_blocks as bb
from .generic import native_configs as generic_configs

MODEL_TYPE = "olmo2"
ARCHITECTURE = "Olmo2ForCausalLM"


def native_configs() -> st.SearchStrategy[native.ModelConfig]:
    """Post-norm RMS blocks with a full-projection RMS q/k norm (one epsilon for all), q/k/v/o biases
    all on or all off, gated bias-free MLP, any rope kind at full rotation, no window."""
    return hc.with_token_ids(generic_configs(**{
        **hc.PLAIN, "placements": ("post",), "qk_norms": ("full",), "qk_norm_kinds": ("rms",),
        "attention_biases": bb.BIAS_ALL_OR_NOTHING}).map(hc.hf_buildable))


@st.composite
def hf_configs(draw):
    """Olmo2Config dicts, v4 (``rope_theta``/``rope_scaling``) and v5 (``rope_parameters``)."""
    hf, layout = draw(hc.hf_sizes(MODEL_TYPE, kv_heads="optional"))
    hf.update({
        "hidden_act": draw(bb.choice(("silu", "gelu", "gelu_pytorch_tanh", "relu"))),
        "rms_norm_eps": draw(bb.epsilons()),
        "attention_bias": draw(st.booleans()),
        "tie_word_embeddings": draw(st.booleans()),
        **draw(hc.token_ids(hf["vocab_size"])),
    })
    hf.update(draw(hc.optional_keys({"attention_dropout": hc.dropouts(), "initializer_range": st.sampled_from([0.02]),
                                     "use_cache": st.booleans()})))
    hf.update(draw(hc.file_keys(ARCHITECTURE)))
    params = draw(hc.rope_parameters(layout.head_dim, hf["max_position_embeddings"]))
    hf.update(draw(hc.rope_keys(params, default_scaling=("null",))))
    return hf


def hf_examples() -> list[dict]:
    """transformers' defaults, and an OLMo-2-1B-shaped config scaled down."""
    small = {"model_type": "olmo2", "architectures": [ARCHITECTURE], "attention_bias": False, "attention_dropout": 0.0,
             "bos_token_id": None, "eos_token_id": 40, "pad_token_id": 41, "hidden_act": "silu", "hidden_size": 32,
             "initializer_range": 0.02, "intermediate_size": 48, "max_position_embeddings": 64,
             "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
             "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False, "torch_dtype": "float32",
             "transformers_version": "4.48.0", "use_cache": True, "vocab_size": 43}
    return [small]


REFUSED = ("qk_norm", "qk_norm_scope", "mlp_gated_flip", "mlp_bias_flip", "norm_kind", "final_norm_eps",
           "placement", "no_rotary", "partial_rotary", "window", "multiplier", "final_softcap", "logit_softcap",
           "softmax_scale", "moe", "q_bias_flip", "o_bias_flip")


def unrepresentable_configs() -> st.SearchStrategy[tuple[native.ModelConfig, str]]:
    """``(cfg, field)``: an accepted config with one feature OLMo2 cannot hold (no or per-head q/k
    norm, another placement, LayerNorm, a biased or plain MLP, partial or no rotary, a window, a lone
    q or o bias, two norm epsilons, an embedding multiplier, softcaps, a softmax scale, MoE), and the
    text the refusal must contain."""
    return mu.unrepresentable(native_configs(), REFUSED, placements=("post",))


hf_configs = hc.with_real_file_forms(hf_configs, MODEL_TYPE)
hf_examples = hc.with_real_configs(hf_examples, MODEL_TYPE)
