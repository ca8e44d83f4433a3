"""The native decoder-only model, written from the maths. Its ``state_dict`` is exactly
``native.layout.state_shapes(cfg)``."""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, visibility_mask
from .config import BlockConfig, MLAConfig, ModelConfig
from .feedforward import make_feedforward
from .layout import block_norm_names, mtp_layers
from .mla import MLA
from .norms import make_norm
from .rotary import rotary_table


class Block(nn.Module):
    """One decoder layer; ``placement`` says where the norms sit (see BlockConfig)."""

    def __init__(self, hidden: int, cfg: BlockConfig):
        super().__init__()
        self.placement = cfg.placement
        for name in block_norm_names(cfg):
            setattr(self, name, make_norm(cfg.norm, hidden))
        self.attn = MLA(hidden, cfg.attention) if isinstance(cfg.attention, MLAConfig) else Attention(hidden, cfg.attention)
        self.mlp = make_feedforward(hidden, cfg.mlp)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        def attn(h):
            return self.attn(h, rotations, allowed)

        if self.placement == "pre":
            h = x + attn(self.attn_norm(x))
            return h + self.mlp(self.mlp_norm(h))
        if self.placement == "post":
            h = x + self.attn_norm(attn(x))
            return h + self.mlp_norm(self.mlp(h))
        if self.placement == "sandwich":
            h = x + self.attn_post_norm(attn(self.attn_norm(x)))
            return h + self.mlp_post_norm(self.mlp(self.mlp_norm(h)))
        if self.placement == "parallel":
            return x + attn(self.attn_norm(x)) + self.mlp(self.mlp_norm(x))
        raise ValueError(f"unknown placement {self.placement!r}")


class MTPLayer(nn.Module):
    """One multi-token-prediction module (DeepSeek-V3): its own embedding, ``enorm``/``hnorm``,
    ``eh_proj`` (H, 2H), a decoder block shaped like the last layer, and a head with its norm.

    Carried, not run: ``forward`` (the next-token logits) never calls it, as transformers' model
    does not; it exists so a checkpoint's MTP weights live in the native state and come back out
    byte for byte (see ``native.layout.mtp_layers``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.hidden_size
        self.embedding = nn.Embedding(cfg.vocab_size, hidden)
        self.enorm = make_norm(cfg.final_norm, hidden)
        self.hnorm = make_norm(cfg.final_norm, hidden)
        self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.layer = Block(hidden, cfg.decoder.layer(cfg.num_layers - 1))
        self.head_norm = make_norm(cfg.final_norm, hidden)
        self.output = nn.Linear(hidden, cfg.vocab_size, bias=False)


class NativeModel(nn.Module):
    """``model(input_ids[, attention_mask]) -> logits (B, T, V)``; positions are ``0..T-1`` whatever
    the padding, and the compute dtype is the parameters' dtype."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg.hidden_size, block) for block in cfg.decoder.layers())
        self.final_norm = make_norm(cfg.final_norm, cfg.hidden_size)
        if not cfg.head.tied:
            self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if mtp_layers(cfg):
            self.mtp = nn.ModuleList(MTPLayer(cfg) for _ in range(mtp_layers(cfg)))
        self._init_weights()

    def _init_weights(self) -> None:
        """Matrices ~ N(0, init_std); norms 1 and biases 0 (as constructed). For tests with every
        tensor non-trivial use :func:`native.init.random_state`."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.normal_(p, std=self.cfg.init_std)

    @classmethod
    def from_state(cls, cfg: ModelConfig, state, *, device=None, dtype: torch.dtype | None = None) -> "NativeModel":
        """Build from a config and its state dict; tensors are adopted as given (dtype kept unless
        given). Reading a checkpoint is :func:`checkpoints.load_model` (``native`` does no I/O)."""
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(dict(state), strict=True, assign=True)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Output projection (``h @ embedding^T`` when tied), then the final softcap."""
        weight = self.embedding.weight if self.cfg.head.tied else self.output.weight
        logits = h @ weight.T
        cap = self.cfg.head.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, return_hidden: bool = False
    ):
        """``attention_mask`` (B, T): 1 for tokens, 0 for padding keys. With ``return_hidden``,
        returns ``(logits, hidden)`` where ``hidden[0]`` is the scaled embedding and
        ``hidden[i + 1]`` the residual stream after layer ``i`` (before the final norm; HF's last
        ``hidden_states`` entry is ``final_norm(hidden[-1])`` instead)."""
        T = input_ids.shape[1]
        x = self.embedding(input_ids)
        if self.cfg.embeddings.multiplier is not None:
            x = x * torch.tensor(self.cfg.embeddings.multiplier, dtype=x.dtype, device=x.device)
        hidden = [x]
        tables: dict = {}  # rotary tables and masks are shared by layers with the same settings
        masks: dict = {}
        for layer in self.layers:
            a = layer.attn.cfg
            rope_key = (a.rotary, a.head_dim)
            if rope_key not in tables:
                tables[rope_key] = rotary_table(a.rotary, a.head_dim, self.cfg.max_position_embeddings, T, x.dtype, x.device)
            if a.window not in masks:
                masks[a.window] = visibility_mask(T, a.window, attention_mask, x.device)
            x = layer(x, tables[rope_key], masks[a.window])
            hidden.append(x)
        logits = self.head(self.final_norm(x))
        return (logits, hidden) if return_hidden else logits

