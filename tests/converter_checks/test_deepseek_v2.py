"""The deepseek_v2 converter: the real DeepSeek-V2-Lite config reads every key; the scaled-down real
config round trips and computes transformers' logits (its checkpoint read from disk, experts eager);
what transformers would run differently is refused. (Checkpoints through ``convcheck convert``:
tests/checkpoint_checks/test_deepseek_checkpoints.py.)"""
from __future__ import annotations

from arch_cases import standard_tests
from converters import get
from properties import normalize
from strategies import _hf_common as hc
from strategies import deepseek_v2 as strategy

CONVERTER = get("deepseek_v2")
EXAMPLES = strategy.hf_examples()
SCALED = EXAMPLES[-1]
HF_REFUSALS = [(key, {**SCALED, **change}) for key, change in [
    ("norm_topk_prob", {"norm_topk_prob": True}),
    ("topk_method", {"topk_method": "noaux_tc"}),
    ("mlp_bias", {"mlp_bias": True}),
]]

globals().update(standard_tests(
    CONVERTER, {"DeepSeek-V2-Lite-small": CONVERTER.import_config(SCALED)}, hf_examples=EXAMPLES,
    example_ids=hc.example_ids(EXAMPLES, ("DeepSeek-V2-Lite", "DeepSeek-V2-Lite-small")),
    hf_refusals=HF_REFUSALS, on_disk=True))


def test_real_config_reads_every_key():
    cfg = CONVERTER.import_config(strategy._real())
    a, m = cfg.decoder.layer(0).attention, cfg.decoder.layer(1).mlp
    assert a.q_lora_rank is None and a.heads == 16 and a.rotary.mscale_all_dim == 0.707
    assert (m.experts, m.top_k, m.groups, m.shared_experts, m.scoring, m.normalize_top_k) == (64, 6, 1, 2, "softmax", False)
    assert normalize(CONVERTER.export_config(cfg)) == normalize(strategy._real())
