"""The feed-forward sections of the native config: a dense gated MLP, a softmax-routed MoE, and
DeepSeekMoE (grouped routing, shared experts)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .schema import Section, architecture
from .schema import check as _check, positive as _positive, positive_int as _positive_int

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")

# ------------------------------------------------------------------------------------ MLP / MoE
@dataclass(frozen=True)
class MLPConfig(Section):
    """Dense feed-forward. Gated: ``fc2(act(gate) * up)`` with ``fc1 = [gate; up]``."""

    kind = "mlp"
    intermediate: int = architecture(256)
    gated: bool = architecture(True)
    activation: str = architecture("silu")
    bias: bool = architecture(False)

    def __post_init__(self):
        _positive_int("mlp", "intermediate", self.intermediate)
        _check(self.activation in ACTIVATIONS, f"mlp.activation={self.activation!r} must be one of {ACTIVATIONS}")


@dataclass(frozen=True)
class MoEConfig(Section):
    """Softmax router, top-k, optional renormalisation, gated experts; optional shared expert."""

    kind = "moe"
    experts: int = architecture(4)
    top_k: int = architecture(2)
    intermediate: int = architecture(128)
    activation: str = architecture("silu")
    normalize_top_k: bool = architecture(True)
    shared_intermediate: int | None = architecture(None)
    shared_gate: bool = architecture(False)  # sigmoid(Linear(hidden, 1)) scaling the shared expert

    def __post_init__(self):
        _positive_int("moe", "experts", self.experts)
        _positive_int("moe", "top_k", self.top_k)
        _check(self.top_k <= self.experts, f"moe.top_k={self.top_k} must not exceed experts={self.experts}")
        _positive_int("moe", "intermediate", self.intermediate)
        _check(self.activation in ACTIVATIONS, f"moe.activation={self.activation!r} must be one of {ACTIVATIONS}")
        _positive_int("moe", "shared_intermediate", self.shared_intermediate, allow_none=True)
        _check(not (self.shared_gate and self.shared_intermediate is None),
               "moe.shared_gate=True requires shared_intermediate")


SCORINGS = ("softmax", "sigmoid")
GROUP_SCORES = ("max", "top2_sum")


@dataclass(frozen=True)
class DeepSeekMoEConfig(Section):
    """DeepSeekMoE: routed experts chosen per token, plus always-on shared experts.

    Routing (computed in at least float32): ``scores = softmax(logits)`` (V2) or ``sigmoid(logits)``
    (V3); the choice is made on ``scores + score_bias`` when ``score_bias`` (V3's
    ``e_score_correction_bias``, a per-expert tensor that shifts the choice but not the weights).
    With ``groups > 1`` the experts are split into equal groups, each group is scored (``max``: its
    best choice score, V2's ``group_limited_greedy``; ``top2_sum``: the sum of its two best, V3) and
    only the experts of the ``top_groups`` best groups can be chosen. The ``top_k`` chosen experts
    are weighted by their (unbiased) scores, renormalised to sum to 1 when ``normalize_top_k``, then
    multiplied by ``scaling_factor`` (``routed_scaling_factor``).

    ``shared_experts`` gated MLPs of width ``intermediate`` run on every token; they are stored
    fused as one MLP of width ``shared_experts * intermediate`` (what a sum of MLPs is; HF does the
    same). 0 means none."""

    kind = "deepseek_moe"
    experts: int = architecture(8)
    top_k: int = architecture(2)
    intermediate: int = architecture(128)
    activation: str = architecture("silu")
    shared_experts: int = architecture(1)
    scoring: str = architecture("sigmoid")
    score_bias: bool = architecture(True)
    groups: int = architecture(1)
    top_groups: int = architecture(1)
    group_score: str = architecture("top2_sum")
    normalize_top_k: bool = architecture(True)
    scaling_factor: float = architecture(1.0)

    def __post_init__(self):
        _positive_int("moe", "experts", self.experts)
        _positive_int("moe", "top_k", self.top_k)
        _positive_int("moe", "intermediate", self.intermediate)
        _check(self.activation in ACTIVATIONS, f"moe.activation={self.activation!r} must be one of {ACTIVATIONS}")
        _check(isinstance(self.shared_experts, int) and not isinstance(self.shared_experts, bool)
               and self.shared_experts >= 0, f"moe.shared_experts={self.shared_experts!r} must be an integer >= 0")
        _check(self.scoring in SCORINGS, f"moe.scoring={self.scoring!r} must be one of {SCORINGS}")
        _check(self.group_score in GROUP_SCORES, f"moe.group_score={self.group_score!r} must be one of {GROUP_SCORES}")
        _positive_int("moe", "groups", self.groups)
        _positive_int("moe", "top_groups", self.top_groups)
        _positive("moe", "scaling_factor", self.scaling_factor)
        _check(self.experts % self.groups == 0, f"moe.groups={self.groups} must divide experts={self.experts}")
        _check(self.top_groups <= self.groups, f"moe.top_groups={self.top_groups} must not exceed groups={self.groups}")
        per_group = self.experts // self.groups
        _check(self.top_k <= self.top_groups * per_group,
               f"moe.top_k={self.top_k} exceeds the {self.top_groups * per_group} experts of the top_groups")
        _check(self.groups == 1 or self.group_score != "top2_sum" or per_group >= 2,
               f"moe.group_score='top2_sum' needs at least 2 experts per group (experts={self.experts}, groups={self.groups})")

    @property
    def shared_intermediate(self) -> int | None:
        """Width of the fused shared MLP, None without shared experts."""
        return self.shared_experts * self.intermediate if self.shared_experts else None


FeedForwardConfig = Union[MLPConfig, MoEConfig, DeepSeekMoEConfig]
