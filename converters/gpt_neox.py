"""GPT-NeoX (Pythia): parallel residual, partial rotary, a per-head fused ``query_key_value``,
LayerNorms with bias, biased MLP, ``embed_out`` on disk.

Checked against transformers 5 ``GPTNeoXConfig``/``modeling_gpt_neox``:

- ``use_parallel_residual``: ``y = x + attn(ln1(x)) + mlp(ln2(x))`` (native ``placement="parallel"``);
  false gives the sequential pre-norm block (``placement="pre"``);
- multi-head only: the head size is ``hidden_size // num_attention_heads`` (there is no ``head_dim``
  or ``num_key_value_heads`` key), and ``query_key_value`` rows are per head ``[q_h; k_h; v_h]``;
- ``attention_bias`` switches the ``query_key_value`` and ``dense`` biases; the MLP's
  ``dense_h_to_4h``/``dense_4h_to_h`` always have biases;
- every norm is ``nn.LayerNorm(hidden, eps=layer_norm_eps)``;
- rotary: ``rope_parameters`` (v5), or the legacy ``rotary_emb_base`` (theta, default 10000) and
  ``rotary_pct`` (partial rotary fraction, default **0.25**) beside an optional ``rope_scaling``.
  ``GPTNeoXConfig`` ignores a top-level ``rope_theta`` or ``partial_rotary_factor`` (transformers
  4.4x wrote them beside the legacy keys): inert, so carried verbatim (converters/key_policy.py);
- the output projection is ``lm_head`` in memory but ``embed_out`` on disk (transformers renames it
  on load and save); this converter speaks the disk format;
- legacy checkpoints carry non-parameter buffers (``attention.bias``, ``attention.masked_bias``,
  ``attention.rotary_emb.inv_freq``) that transformers recomputes and ignores on load: import drops
  them, export never writes them.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from native import BlockConfig

from .activations import ACTIVATIONS
from .config_primitives import ConstantImport, Mapped, Rename
from .declaration import LayerwisePrimitive
from .errors import ConversionError
from .attention import bias_flag
from .llama import ALL_ROPE_KINDS, LlamaConverter
from .rope import canonical_rope, rotary_dispatch
from .starcoder2 import layer_norm, layer_norm_rules
from .weights.rules import WeightRule, embedding_and_head, neox_qkv, neox_qkv_bias, rename, walk_layers
from .weights.transforms import Identity

CARRIED = ("bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache",
           "attention_dropout", "hidden_dropout", "classifier_dropout", "is_decoder",
           # legacy (pre-v4.30) names of the dropouts: read by nothing in transformers 5
           "attention_probs_dropout_prob", "hidden_dropout_prob")

DEFAULT_ROTARY_PCT = 0.25
LEGACY_BUFFERS = ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq")


class NeoXHeads(LayerwisePrimitive):
    """GPT-NeoX is multi-head with ``head_size = hidden_size // num_attention_heads``: native
    ``kv_heads`` must equal ``heads`` and ``head_dim * heads`` must equal ``hidden_size``."""

    native_paths = ("attention.kv_heads", "attention.head_dim")
    hf_keys = ()

    def export(self, layers, get_model):
        hidden = get_model("hidden_size")
        for i, block in enumerate(layers):
            a = block.attention
            if a.kv_heads != a.heads:
                raise ConversionError(f"layer {i}: attention.kv_heads={a.kv_heads} cannot be expressed: GPT-NeoX "
                                      f"is multi-head only (kv_heads must equal heads={a.heads})")
            if a.head_dim * a.heads != hidden:
                raise ConversionError(f"layer {i}: attention.head_dim={a.head_dim} cannot be expressed: GPT-NeoX's "
                                      f"head size is hidden_size // num_attention_heads = {hidden // a.heads}")
        return {}

    def import_(self, hf, num_layers):
        hidden, heads = hf.get("hidden_size"), hf.get("num_attention_heads")
        if not isinstance(heads, int) or heads < 1 or hidden % heads:
            raise ConversionError(f"config.json: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
        return [{"attention.kv_heads": heads, "attention.head_dim": hidden // heads}] * num_layers, {}


@dataclasses.dataclass(frozen=True)
class DroppedBuffers(WeightRule):
    """Non-parameter buffers some HF checkpoints carry: claimed optionally on import and dropped;
    nothing is produced on either side."""

    dropped: tuple[str, ...] = ()

    def optional_sources(self, direction: str) -> tuple[str, ...]:
        return self.dropped if direction == "import" else ()

    def claims(self, side: str) -> tuple[str, ...]:
        return self.dropped if side == "hf" else ()

    def run(self, direction: str, tensors: Sequence, copy: bool = True) -> list:
        return []

    def describe(self) -> str:
        return f"(dropped buffers: {', '.join(self.dropped)})"

    def prefixed(self, native_prefix: str, hf_prefix: str) -> "DroppedBuffers":
        return dataclasses.replace(self, dropped=tuple(hf_prefix + n for n in self.dropped))


class GPTNeoXConverter(LlamaConverter):
    model_type = "gpt_neox"
    architecture = "GPTNeoXForCausalLM"
    rope_kinds = ALL_ROPE_KINDS
    carried = CARRIED
    max_position_default = 2048

    def model_section(self):
        return {
            **super().model_section(),
            "final_norm": layer_norm("final_norm", "layer_norm_eps", 1e-5),
        }

    def layer_section(self):
        section = {
            **super().layer_section(),
            "placement": Mapped("placement", "use_parallel_residual", (("parallel", True), ("pre", False)), default=True),
            "norm": layer_norm("norm", "layer_norm_eps", 1e-5),
            "kv_heads": NeoXHeads(),  # and head_dim
            "bias": bias_flag("attention_bias", default=True),
            "rotary": rotary_dispatch(self.rope_kinds, fraction=Rename(
                "fraction", "rope_parameters.partial_rotary_factor", default=DEFAULT_ROTARY_PCT, to_native=float)),
        }
        del section["head_dim"]  # no head_dim key: NeoXHeads derives it
        return section

    def mlp_section(self):
        return {
            "intermediate": Rename("intermediate", "intermediate_size"),
            "gated": ConstantImport("gated", False, "GPT-NeoX's MLP is plain dense_h_to_4h -> act -> dense_4h_to_h"),
            "activation": Mapped("activation", "hidden_act", ACTIVATIONS, default="gelu"),
            "bias": ConstantImport("bias", True, "GPT-NeoX's MLP linears always have biases"),
        }

    def canonical_hf(self, hf):
        """The legacy keys ``rotary_emb_base``/``rotary_pct`` become ``rope_parameters`` entries, as
        ``GPTNeoXConfig.convert_rope_params_to_dict`` does (entries already there win; a
        contradiction is refused). Top-level ``rope_theta``/``partial_rotary_factor`` are ignored by
        ``GPTNeoXConfig``: they are kept out of the rope section and left to the key policy."""
        out = dict(hf)
        inert = {key: out.pop(key) for key in ("rope_theta", "partial_rotary_factor") if key in out}
        legacy = {"rope_theta": ("rotary_emb_base", out.pop("rotary_emb_base", None), self.default_theta),
                  "partial_rotary_factor": ("rotary_pct", out.pop("rotary_pct", None), DEFAULT_ROTARY_PCT)}
        keys = [k for k in ("rope_scaling", "rope_parameters") if out.get(k)] or ["rope_parameters"]
        for key in keys:
            params = dict(out.get(key) or {})
            for name, (legacy_key, value, default) in legacy.items():
                if value is not None and name in params and params[name] != value:
                    raise ConversionError(f"config.json: {key}.{name}={params[name]!r} contradicts "
                                          f"{legacy_key}={value!r}")
                params.setdefault(name, default if value is None else value)
            out[key] = params
        return {**canonical_rope(out, self.default_theta), **inert}

    def weight_rules(self, cfg):
        def layer(i: int, block: BlockConfig) -> list[WeightRule]:
            a = block.attention
            rotary_dim = a.rotary.rotary_dim(a.head_dim)
            rules = [*layer_norm_rules("attn_norm", "input_layernorm", block.norm),
                     neox_qkv("attn.qkv.weight", "attention.query_key_value.weight",
                              heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim, rotary_dim=rotary_dim)]
            if a.q_bias:  # all four or none (attention_bias)
                rules.append(neox_qkv_bias(("attn.q_bias", "attn.k_bias", "attn.v_bias"),
                                           "attention.query_key_value.bias",
                                           heads=a.heads, head_dim=a.head_dim, rotary_dim=rotary_dim))
            rules.append(rename("attn.o.weight", "attention.dense.weight"))
            if a.o_bias:
                rules.append(rename("attn.o.bias", "attention.dense.bias"))
            rules += [*layer_norm_rules("mlp_norm", "post_attention_layernorm", block.norm),
                      rename("mlp.fc1.weight", "mlp.dense_h_to_4h.weight"),
                      rename("mlp.fc1.bias", "mlp.dense_h_to_4h.bias"),
                      rename("mlp.fc2.weight", "mlp.dense_4h_to_h.weight"),
                      rename("mlp.fc2.bias", "mlp.dense_4h_to_h.bias")]
            # one rule per buffer: their dtypes differ (bool mask, float bias, float32 inv_freq)
            rules += [DroppedBuffers((), (), Identity(0), dropped=(name,)) for name in LEGACY_BUFFERS]
            return rules

        return [*embedding_and_head(cfg.head.tied, hf_embedding="gpt_neox.embed_in.weight", hf_output="embed_out.weight"),
                *walk_layers(cfg.decoder.layers(), layer, hf_prefix="gpt_neox.layers.{i}."),
                *layer_norm_rules("final_norm", "gpt_neox.final_layer_norm", cfg.final_norm)]
