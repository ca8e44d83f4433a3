"""The native state-dict layout: every tensor name and shape, derived from the config alone.

One representation of this fact: the model registers exactly these parameters, the checkpoint
reader validates against them, and converters check shapes against them without building a model.

Layout rules (DESIGN §2):
- ``attn.qkv.weight`` is fused and grouped per KV head: for each kv group ``g`` the rows are
  ``[q heads of g (group * head_dim); k_g (head_dim); v_g (head_dim)]``.
- q and k rows (and q/k biases, and q/k norm weights) keep rotary pairs **interleaved**
  (dims ``2j, 2j+1`` form pair ``j``) in the first ``rotary_dim`` dims of each head.
- q/k/v biases are separate vectors (``attn.q_bias`` …), head-major, so any bias pattern is
  representable.
- ``mlp.fc1`` is ``[gate; up]`` when gated.
- MoE experts are stacked: ``experts.fc1`` (E, 2I, H) and ``experts.fc2`` (E, H, I).
- Norm weights are stored as the checkpoint has them: the gain, or for a zero-centred RMSNorm
  (``RMSNormConfig.zero_centered``, Gemma) its offset ``w``, applied as ``1 + w``.
- No ``output.weight`` when the head is tied.
"""
from __future__ import annotations

from .config import BlockConfig, LayerNormConfig, MLAConfig, ModelConfig, RMSNormConfig
from .feedforward_config import DeepSeekMoEConfig, MLPConfig, MoEConfig

Shape = tuple[int, ...]


def norm_shapes(prefix: str, norm, size: int) -> dict[str, Shape]:
    shapes = {f"{prefix}.weight": (size,)}
    if isinstance(norm, LayerNormConfig) and norm.bias:
        shapes[f"{prefix}.bias"] = (size,)
    return shapes


def block_norm_names(block: BlockConfig) -> tuple[str, ...]:
    """Norm modules of a block, by placement (see BlockConfig)."""
    if block.placement == "sandwich":
        return ("attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm")
    return ("attn_norm", "mlp_norm")


def mla_shapes(prefix: str, hidden: int, a: MLAConfig) -> dict[str, Shape]:
    """Multi-head latent attention (see ``MLAConfig``): per head, q rows are ``[nope; rope]`` and
    ``kv_up`` rows ``[k_nope; v]``; ``kv_down`` rows are ``[latent; shared rope key]``. Rope rows
    are in interleaved pair order. The two down projections stay separate (as in Megatron's MLA),
    each up projection beside its norm."""
    q_size = a.heads * a.qk_head_dim
    shapes: dict[str, Shape] = {}
    if a.q_lora_rank is None:
        shapes[f"{prefix}.q.weight"] = (q_size, hidden)
    else:
        shapes[f"{prefix}.q_down.weight"] = (a.q_lora_rank, hidden)
        if a.bias:
            shapes[f"{prefix}.q_down.bias"] = (a.q_lora_rank,)
        shapes[f"{prefix}.q_norm.weight"] = (a.q_lora_rank,)
        shapes[f"{prefix}.q_up.weight"] = (q_size, a.q_lora_rank)
    shapes[f"{prefix}.kv_down.weight"] = (a.kv_lora_rank + a.qk_rope_head_dim, hidden)
    if a.bias:
        shapes[f"{prefix}.kv_down.bias"] = (a.kv_lora_rank + a.qk_rope_head_dim,)
    shapes[f"{prefix}.kv_norm.weight"] = (a.kv_lora_rank,)
    shapes[f"{prefix}.kv_up.weight"] = (a.heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank)
    shapes[f"{prefix}.o.weight"] = (hidden, a.heads * a.v_head_dim)
    if a.bias:
        shapes[f"{prefix}.o.bias"] = (hidden,)
    return shapes


def deepseek_moe_shapes(prefix: str, hidden: int, moe: DeepSeekMoEConfig) -> dict[str, Shape]:
    """Router (with ``score_bias`` when the choice is biased), stacked experts, and the shared
    experts fused into one gated MLP."""
    shapes: dict[str, Shape] = {f"{prefix}.router.weight": (moe.experts, hidden)}
    if moe.score_bias:
        shapes[f"{prefix}.router.score_bias"] = (moe.experts,)
    shapes[f"{prefix}.experts.fc1"] = (moe.experts, 2 * moe.intermediate, hidden)
    shapes[f"{prefix}.experts.fc2"] = (moe.experts, hidden, moe.intermediate)
    if moe.shared_experts:
        shapes.update(mlp_shapes(f"{prefix}.shared", hidden, MLPConfig(moe.shared_intermediate, True, moe.activation, False)))
    return shapes


def attention_shapes(prefix: str, hidden: int, block: BlockConfig) -> dict[str, Shape]:
    a = block.attention
    if isinstance(a, MLAConfig):
        return mla_shapes(prefix, hidden, a)
    q_size, kv_size = a.heads * a.head_dim, a.kv_heads * a.head_dim
    shapes: dict[str, Shape] = {f"{prefix}.qkv.weight": (q_size + 2 * kv_size, hidden)}
    for name, on, size in (("q", a.q_bias, q_size), ("k", a.k_bias, kv_size), ("v", a.v_bias, kv_size)):
        if on:
            shapes[f"{prefix}.{name}_bias"] = (size,)
    shapes[f"{prefix}.o.weight"] = (hidden, q_size)
    if a.o_bias:
        shapes[f"{prefix}.o.bias"] = (hidden,)
    if a.qk_norm is not None:
        q_norm = a.head_dim if a.qk_norm_scope == "head" else q_size
        k_norm = a.head_dim if a.qk_norm_scope == "head" else kv_size
        shapes.update(norm_shapes(f"{prefix}.q_norm", a.qk_norm, q_norm))
        shapes.update(norm_shapes(f"{prefix}.k_norm", a.qk_norm, k_norm))
    return shapes


def mlp_shapes(prefix: str, hidden: int, mlp: MLPConfig) -> dict[str, Shape]:
    rows = 2 * mlp.intermediate if mlp.gated else mlp.intermediate
    shapes: dict[str, Shape] = {f"{prefix}.fc1.weight": (rows, hidden)}
    if mlp.bias:
        shapes[f"{prefix}.fc1.bias"] = (rows,)
    shapes[f"{prefix}.fc2.weight"] = (hidden, mlp.intermediate)
    if mlp.bias:
        shapes[f"{prefix}.fc2.bias"] = (hidden,)
    return shapes


def moe_shapes(prefix: str, hidden: int, moe: MoEConfig) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {
        f"{prefix}.router.weight": (moe.experts, hidden),
        f"{prefix}.experts.fc1": (moe.experts, 2 * moe.intermediate, hidden),
        f"{prefix}.experts.fc2": (moe.experts, hidden, moe.intermediate),
    }
    if moe.shared_intermediate is not None:
        shapes.update(mlp_shapes(f"{prefix}.shared", hidden, MLPConfig(moe.shared_intermediate, True, moe.activation, False)))
    if moe.shared_gate:
        shapes[f"{prefix}.shared_gate.weight"] = (1, hidden)
    return shapes


def block_shapes(prefix: str, hidden: int, block: BlockConfig) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for name in block_norm_names(block):
        shapes.update(norm_shapes(f"{prefix}.{name}", block.norm, hidden))
    shapes.update(attention_shapes(f"{prefix}.attn", hidden, block))
    if isinstance(block.mlp, MoEConfig):
        shapes.update(moe_shapes(f"{prefix}.mlp", hidden, block.mlp))
    elif isinstance(block.mlp, DeepSeekMoEConfig):
        shapes.update(deepseek_moe_shapes(f"{prefix}.mlp", hidden, block.mlp))
    else:
        shapes.update(mlp_shapes(f"{prefix}.mlp", hidden, block.mlp))
    return shapes


def norm_configs(cfg: ModelConfig) -> dict[str, object]:
    """Every norm weight name → its norm config (what the weight means: a gain or a zero-centred
    offset), in ``state_shapes`` order."""
    found: dict[str, object] = {}
    for i in range(cfg.num_layers):
        block = cfg.decoder.layer(i)
        for name in block_norm_names(block):
            found[f"layers.{i}.{name}.weight"] = block.norm
        attention = block.attention
        if isinstance(attention, MLAConfig):  # the LoRA norms hold plain gains
            lora_norm = RMSNormConfig(eps=attention.lora_norm_eps)
            names = ("q_norm", "kv_norm") if attention.q_lora_rank is not None else ("kv_norm",)
            for name in names:
                found[f"layers.{i}.attn.{name}.weight"] = lora_norm
        elif attention.qk_norm is not None:
            for name in ("q_norm", "k_norm"):
                found[f"layers.{i}.attn.{name}.weight"] = attention.qk_norm
    found["final_norm.weight"] = cfg.final_norm
    return found


def layer_shapes(cfg: ModelConfig, i: int) -> dict[str, Shape]:
    return block_shapes(f"layers.{i}", cfg.hidden_size, cfg.decoder.layer(i))


def state_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every native tensor name → shape, in a stable order (embedding, layers, final norm, output)."""
    shapes: dict[str, Shape] = {"embedding.weight": (cfg.vocab_size, cfg.hidden_size)}
    for i in range(cfg.num_layers):
        shapes.update(layer_shapes(cfg, i))
    shapes.update(norm_shapes("final_norm", cfg.final_norm, cfg.hidden_size))
    if not cfg.head.tied:
        shapes["output.weight"] = (cfg.vocab_size, cfg.hidden_size)
    for j in range(mtp_layers(cfg)):
        shapes.update(mtp_shapes(cfg, j))
    return shapes


#: native metadata key: how many multi-token-prediction modules the checkpoint carries
MTP_KEY = "mtp_layers"


def mtp_layers(cfg: ModelConfig) -> int:
    """The MTP modules a native state carries (DeepSeek-V3's ``num_nextn_predict_layers`` extra
    layers, when the checkpoint has their weights). A setting, not architecture: the model's
    logits never read them, so they live in ``metadata`` and only add tensors to the layout."""
    return int(cfg.metadata.get(MTP_KEY, 0))


def mtp_shapes(cfg: ModelConfig, j: int) -> dict[str, Shape]:
    """``mtp.{j}.*``: embedding, ``enorm``/``hnorm``, ``eh_proj`` (H, 2H), a block shaped like
    the last decoder layer (``mtp.{j}.layer.*``), ``head_norm`` and ``output``."""
    H, prefix = cfg.hidden_size, f"mtp.{j}"
    shapes: dict[str, Shape] = {f"{prefix}.embedding.weight": (cfg.vocab_size, H)}
    shapes.update(norm_shapes(f"{prefix}.enorm", cfg.final_norm, H))
    shapes.update(norm_shapes(f"{prefix}.hnorm", cfg.final_norm, H))
    shapes[f"{prefix}.eh_proj.weight"] = (H, 2 * H)
    shapes.update(block_shapes(f"{prefix}.layer", H, cfg.decoder.layer(cfg.num_layers - 1)))
    shapes.update(norm_shapes(f"{prefix}.head_norm", cfg.final_norm, H))
    shapes[f"{prefix}.output.weight"] = (cfg.vocab_size, H)
    return shapes


def layer_of(name: str) -> int | None:
    """Layer index of a native tensor name, or None for embedding/final norm/output."""
    if name.startswith("layers."):
        return int(name.split(".")[1])
    return None
