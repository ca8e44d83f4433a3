"""Routing near-ties: the positions a reduced-precision MoE comparison cannot judge.

A top-k router chooses experts by comparing logits. Where the k-th and the (k+1)-th logits of a
token are closer than the rounding that precision is allowed at that layer, either choice is a
correct low-precision result, and the two differ by a whole expert's output: far more than
rounding. Such a tie was found by the CUDA gate (Mixtral, top-1 of 3 experts, bfloat16: one token
flipped, relative error 8.8e-2 against a tolerance of 2.7e-2, every other position at 5e-3).

The tie is judged on the native float64 model (which the float64 column holds to HF's float64 within
1e-7), with a bound that needs no assumption about the rounding pattern: a router logit is
``w_e · h``, so a relative error ``band`` in the router input ``h`` moves the gap between experts
``a`` and ``b`` by at most ``band · ‖h‖ · ‖w_a − w_b‖`` (Cauchy–Schwarz).

A flipped choice at layer ``l`` and position ``t`` changes that position from layer ``l`` on and,
through attention, every later position of the row from layer ``l + 1`` on; in the last layer it
changes only its own position. Those positions are excluded from the comparison, and only when the
comparison fails otherwise (:func:`properties.forward.measure_reduced`): a converter bug moves every
position, so the positions left still show it.
"""
from __future__ import annotations

from typing import Callable

import torch

import native
from native import DeepSeekMoEConfig, MoEConfig
from native.deepseek_moe import DeepSeekMoE
from native.feedforward import MoE

from . import common


def has_routing(cfg: native.ModelConfig) -> bool:
    """Whether any layer chooses among experts (top-k below the expert count)."""
    return any(isinstance(b.mlp, (MoEConfig, DeepSeekMoEConfig)) and b.mlp.top_k < b.mlp.experts
               for b in cfg.decoder.blocks)


def near_tie_positions(cfg: native.ModelConfig, state, ids: torch.Tensor, mask: torch.Tensor,
                       band: Callable[[int], float]) -> torch.Tensor:
    """``(B, T)`` bool: positions whose output may depend on a routing near-tie (see the module
    docstring): :func:`router_near_ties` spread by :func:`affected_positions`."""
    return affected_positions(router_near_ties(cfg, state, ids, mask, band), cfg.num_layers, ids.shape)


def router_near_ties(cfg: native.ModelConfig, state, ids: torch.Tensor, mask: torch.Tensor,
                     band: Callable[[int], float]) -> dict[int, torch.Tensor]:
    """``{layer: (B, T) bool}``: the tokens whose k-th and (k+1)-th router logits are within
    ``band(layer) · ‖h‖ · ‖w_a − w_b‖`` of each other in the native float64 model.

    ``state`` is the native state (any float dtype; the model runs in float64 on ``ids``' device);
    ``band(layer)`` is the relative error of that layer's router input the comparison allows.
    Layers that choose every expert (top-k = experts) have nothing to flip and are left out."""
    model = common.native_model(cfg, {k: v.to(torch.float64) for k, v in state.items()}, torch.float64, ids.device)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [layer.mlp.router.register_forward_hook(
                 lambda module, args, out, i=i: seen.__setitem__(i, (args[0], out)))
             for i, layer in enumerate(model.layers) if isinstance(layer.mlp, MoE)]
    hooks += [layer.mlp.router.register_forward_hook(
                  lambda module, args, out, i=i: seen.__setitem__(i, (args[0], None)))
              for i, layer in enumerate(model.layers) if isinstance(layer.mlp, DeepSeekMoE)]
    try:
        with torch.no_grad():
            model(ids, attention_mask=mask)
    finally:
        for hook in hooks:
            hook.remove()
    ties = {}
    for i, (h, logits) in seen.items():
        if logits is None:
            ties[i] = deepseek_near_ties(model.layers[i].mlp.router, h, band(i)).view(ids.shape)
            continue
        k = model.layers[i].mlp.cfg.top_k
        if k >= logits.shape[-1]:
            continue
        top = logits.topk(k + 1, dim=-1)
        gap = top.values[:, k - 1] - top.values[:, k]
        weight = model.layers[i].mlp.router.weight
        spread = (weight[top.indices[:, k - 1]] - weight[top.indices[:, k]]).norm(dim=-1)
        ties[i] = (gap <= band(i) * h.norm(dim=-1) * spread).view(ids.shape)
    return ties


def affected_positions(ties: dict[int, torch.Tensor], layers: int, shape) -> torch.Tensor:
    """``shape`` (B, T) bool: a tie at layer ``l``, position ``t`` affects ``t`` and, unless ``l`` is
    the last layer, every later position of its row (attention reads ``t`` from layer ``l + 1`` on)."""
    affected = torch.zeros(shape, dtype=torch.bool)
    for layer, tie in ties.items():
        spread = tie if layer == layers - 1 else tie.int().cummax(dim=-1).values.bool()
        affected = affected.to(tie.device) | spread
    return affected


def deepseek_near_ties(router, h: torch.Tensor, band: float) -> torch.Tensor:
    """(N,) bool: DeepSeekMoE tokens whose group choice or expert choice could flip. A relative
    error ``band`` in ``h`` moves each router logit by at most ``D = band · ‖h‖ · max‖w_e‖``; a
    sigmoid score (plus its fixed bias) by at most ``D / 4``, a softmax's order is its logits'. Two
    choices are a near-tie when their gap is within ``2D`` (``4D`` between groups summing two)."""
    c = router.cfg
    weight = router.weight.to(h.dtype)
    logits = h @ weight.T
    if c.scoring == "sigmoid":
        choice = logits.sigmoid() + (router.score_bias.to(h.dtype) if c.score_bias else 0)
    else:
        choice = logits  # softmax keeps the logits' order, and has no bias here
    d = 2 * band * h.norm(dim=-1) * weight.norm(dim=-1).max()
    tie = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    if c.groups > 1 and c.top_groups < c.groups:
        grouped = choice.view(-1, c.groups, c.experts // c.groups)
        scores = grouped.amax(-1) if c.group_score == "max" else grouped.topk(2, dim=-1).values.sum(-1)
        top = scores.topk(c.top_groups + 1, dim=-1)
        tie |= top.values[:, -2] - top.values[:, -1] <= (2 if c.group_score == "top2_sum" else 1) * d
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top.indices[:, :-1], True)
        choice = choice.masked_fill(~kept.repeat_interleave(c.experts // c.groups, dim=1), float("-inf"))
    top = choice.topk(c.top_k + 1, dim=-1).values
    return tie | (top[:, -2] - top[:, -1] <= d)
