"""The deepseek_v3 converter: the real DeepSeek-V3 config reads every key; the scaled-down real config
round trips and computes transformers' logits (its checkpoint read from disk, experts eager); what
transformers would run differently is refused. (Checkpoints, MTP layers and FP8 through
``convcheck convert``: tests/checkpoint_checks/test_deepseek_checkpoints.py.)"""
from __future__ import annotations

import math

import pytest

import native
from arch_cases import standard_tests
from converters import get
from properties import normalize
from strategies import _hf_common as hc
from strategies import deepseek_v3 as strategy

CONVERTER = get("deepseek_v3")
EXAMPLES = strategy.hf_examples()
SCALED = EXAMPLES[-1]
HF_REFUSALS = [(key, {**SCALED, **change}) for key, change in [
    ("moe_layer_freq", {"moe_layer_freq": 2}),
    ("scoring_func", {"scoring_func": "softmax"}),
    ("topk_method", {"topk_method": "greedy"}),
    ("num_key_value_heads", {"num_key_value_heads": 2}),
    ("qk_head_dim", {"qk_head_dim": 7}),
]]

globals().update(standard_tests(
    CONVERTER, {"DeepSeek-V3-small": CONVERTER.import_config(SCALED)}, hf_examples=EXAMPLES,
    example_ids=hc.example_ids(EXAMPLES, ("transformers-default", "DeepSeek-V3", "DeepSeek-V3-small")),
    hf_refusals=HF_REFUSALS, on_disk=True))


def test_real_config_reads_every_key():
    cfg = CONVERTER.import_config(strategy._real())
    dense, moe = cfg.decoder.layer(0), cfg.decoder.layer(3)
    a = dense.attention
    assert (a.heads, a.q_lora_rank, a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim) == \
        (128, 1536, 512, 128, 64, 128)
    assert a.rotary.kind == "yarn" and a.rotary.factor == 40 and a.rotary.mscale_all_dim == 1.0
    assert a.softmax_scale == pytest.approx(192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2)
    assert [isinstance(b.mlp, native.DeepSeekMoEConfig) for b in cfg.decoder.layers()] == [False] * 3 + [True] * 58
    m = moe.mlp
    assert (m.experts, m.top_k, m.groups, m.top_groups, m.shared_experts, m.scaling_factor) == (256, 8, 8, 4, 1, 2.5)
    assert (m.scoring, m.score_bias, m.group_score, m.normalize_top_k) == ("sigmoid", True, "top2_sum", True)
    assert cfg.metadata["num_nextn_predict_layers"] == 1 and cfg.metadata["topk_method"] == "noaux_tc"
    assert normalize(CONVERTER.export_config(cfg)) == normalize(strategy._real())
