"""Routers (linear top-k softmax, ZAYA1's MLP router) and SwiGLU experts of the reference model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import ModelSpec
from .norms import RMSNorm


@dataclass(frozen=True)
class ExpertRestriction:
    """Rows whose router choice is restricted to a subset of the experts (the TiDAR draft-row expert budget).

    Row n (of the flattened B*T rows) with group[n] = g >= 0 chooses its top-k only among the classes of
    allowed set g; rows with group -1 route freely. The sets are derived per layer from the free rows' own
    choices: set g is the union of the classes chosen by the rows with source[n] = g (the verify rows of a
    decode step, which compute p and route exactly), plus the `extra` real experts with the largest router
    mass (summed probability) over the restricted rows of set g among those not yet in it. The skip class, if
    any, is always allowed; a set with no source row allows everything. Everything is computed on the device:
    no host synchronisation, fixed shapes (graph-capturable). The restricted rows only compute drafts q, and
    the lossless rule is exact for any q, so the restriction never changes what the verifier takes as p
    (../shared/DESIGN.md, "Speculation on a mixture of experts")."""

    group: torch.Tensor  # (N,) long, -1 for a freely routed row
    groups: int  # G
    source: torch.Tensor  # (N,) long: the set a free row's choices load, -1 for none
    extra: int = 0  # top-m real experts by router mass added to each derived set

    def allowed(self, experts: torch.Tensor, logits: torch.Tensor, num_experts: int, skip_expert: bool):
        """(G, C) bool allowed classes, from this layer's free choices experts (N, k) and router logits (N, C)
        (the router mass is their fp32 softmax, the same in the reference and the kernels)."""
        device = logits.device
        counts = torch.zeros(self.groups + 1, logits.shape[-1], device=device)
        index = (self.source.to(device) + 1)[:, None].expand_as(experts)  # row 0 collects the rows that load nothing
        counts.index_put_((index.reshape(-1), experts.reshape(-1)), torch.ones(experts.numel(), device=device),
                          accumulate=True)
        allowed = counts[1:] > 0
        unloaded = ~allowed.any(-1, keepdim=True)  # no source row: nothing to restrict to
        if self.extra:
            allowed = allowed | self._top_mass(torch.softmax(logits.detach().float(), -1), allowed, num_experts)
        allowed = allowed | unloaded
        if skip_expert:
            allowed = allowed.clone()
            allowed[:, num_experts] = True
        return allowed

    def _top_mass(self, probs: torch.Tensor, allowed: torch.Tensor, num_experts: int) -> torch.Tensor:
        """(G, C) bool: per set, the `extra` real experts outside it with the largest summed probability."""
        group = self.group.to(probs.device)
        mass = torch.zeros(self.groups + 1, probs.shape[-1], device=probs.device)
        mass = mass.index_add(0, group + 1, probs)[1:]
        mass[:, num_experts:] = -1.0  # never the skip class (it is allowed anyway)
        mass = mass.masked_fill(allowed, -1.0)
        top = mass.topk(min(self.extra, num_experts), dim=-1).indices  # past the outside ones: already allowed
        return torch.zeros_like(allowed).scatter_(1, top, True)

    def row_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """(N, C) bool: what each row may choose (everything for a free row)."""
        group = self.group.to(allowed.device)
        return allowed[group.clamp(min=0)] | (group < 0)[:, None]


@dataclass
class Routing:
    experts: torch.Tensor  # (N, top_k) long; == num_experts for the skip expert
    weights: torch.Tensor  # (N, top_k) routing weight of each choice; 0 for the skip expert
    logits: torch.Tensor  # (N, classes) router logits (for balancing statistics)


class Router(nn.Module):
    """Chooses top_k of the E (+1 skip) classes per token.

    The balancing bias moves the *choice* only; the weight is the unbiased probability.
    """

    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        moe = spec.moe
        self.moe = moe
        self.kind = moe.router.kind
        classes = moe.router_classes
        if self.kind == "linear":
            self.weight = nn.Parameter(torch.empty(classes, spec.hidden_size))
        else:
            R = moe.router.hidden_size
            self.down_proj = nn.Linear(spec.hidden_size, R)
            # from layer 1 on the router also reads the previous layer's router state
            self.state_scale = nn.Parameter(torch.ones(R)) if layer_idx > 0 else None
            self.norm = RMSNorm(R, spec.norm_eps)
            self.fc1 = nn.Linear(R, R)
            self.fc2 = nn.Linear(R, R)
            self.out_proj = nn.Linear(R, classes, bias=False)
        bias = torch.zeros(classes)
        if moe.skip_expert:
            bias[-1] = moe.balancing_bias.skip_init
        self.register_buffer("balancing_bias", bias)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None, restrict: ExpertRestriction | None = None):
        """x (N, H) -> Routing and the router state handed to the next layer (None for linear); `restrict`
        limits some rows' choices (the draft rows' expert budget)."""
        if self.kind == "linear":
            logits = F.linear(x, self.weight)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            next_state = None
        else:
            hidden = self.down_proj(x)
            if self.state_scale is not None and state is not None:
                hidden = hidden + state * self.state_scale
            next_state = hidden
            logits = self.out_proj(F.gelu(self.fc2(F.gelu(self.fc1(self.norm(hidden))))))
            probs = torch.softmax(logits, dim=-1)
        # the bias is all zeros unless balancing or a skip expert is configured
        score = probs.detach().float() + self.balancing_bias
        experts = torch.topk(score, self.moe.top_k, dim=-1).indices
        if restrict is not None:
            allowed = restrict.allowed(experts, logits, self.moe.num_experts, self.moe.skip_expert)
            score = score.masked_fill(~restrict.row_mask(allowed), float("-inf"))
            experts = torch.topk(score, self.moe.top_k, dim=-1).indices
        weights = torch.gather(probs, -1, experts)
        if self.moe.router.normalize_top_k:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(logits.dtype)
        if self.moe.skip_expert:
            weights = weights.masked_fill(experts == self.moe.num_experts, 0)
        return Routing(experts, weights, logits), next_state


class Experts(nn.Module):
    """E SwiGLU experts with stacked weights: gate_up (E, 2I, H), down (E, H, I)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        moe, H = spec.moe, spec.hidden_size
        self.gate_up = nn.Parameter(torch.empty(moe.num_experts, 2 * moe.ffn_size, H))
        self.down = nn.Parameter(torch.empty(moe.num_experts, H, moe.ffn_size))

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """x (N, H) -> sum over the token's choices of weight * expert(x); the skip expert adds nothing."""
        out = torch.zeros_like(x)
        for e in range(self.gate_up.shape[0]):
            token, slot = torch.nonzero(routing.experts == e, as_tuple=True)
            if token.numel() == 0:
                continue
            gate, up = F.linear(x[token], self.gate_up[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.down[e]) * routing.weights[token, slot, None]
            out = out.index_add(0, token, y.to(out.dtype))
        return out


class MoE(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        self.router = Router(spec, layer_idx)
        self.experts = Experts(spec)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None, restrict: ExpertRestriction | None = None):
        B, T, H = x.shape
        flat_state = None if state is None else state.reshape(B * T, -1)
        routing, next_state = self.router(x.reshape(B * T, H), flat_state, restrict)
        out = self.experts(x.reshape(B * T, H), routing).view(B, T, H)
        next_state = None if next_state is None else next_state.view(B, T, -1)
        return out, next_state, routing


def expert_load(routings: list[Routing], num_experts: int) -> torch.Tensor:
    """(layers, num_experts) token-choice counts of the real experts (the skip expert is not counted).

    scatter_add, not bincount: bincount reads the largest id back to the host, a sync per layer."""
    counts = []
    for r in routings:
        ids = r.experts.flatten()
        ones = torch.ones(ids.shape, device=ids.device)
        counts.append(torch.zeros(num_experts + 1, device=ids.device).scatter_add_(0, ids, ones)[:num_experts])
    return torch.stack(counts)  # contiguous: it is all-reduced in place over data-parallel ranks


@torch.no_grad()
def update_balancing_bias(model, load: torch.Tensor) -> None:
    """The 'sign' rule: b_e += rate * sign(mean load - load_e), per layer, real experts only.

    `load` must already be summed over data-parallel ranks so every rank applies the same step.
    The skip expert keeps its bias: its share is a modelling choice, not an imbalance.
    """
    if model.spec.moe is None:  # dense: no router
        return
    rule = model.spec.moe.balancing_bias
    if not rule.enabled:
        return
    for layer, counts in zip(model.layers, load):
        bias = layer.moe.router.balancing_bias
        step = rule.update_rate * torch.sign(counts.mean() - counts).to(bias.device)
        bias[: len(counts)] += step


def draft_restriction(layout, rows: int, device, extra: int = 0) -> ExpertRestriction:
    """The draft-row expert budget of one forward over a layout (`.kind`, `.block_size`, `.tensors(device)`).

    Decode / prefill: the rows past each sequence's causal rows (the proposal blocks) choose among the classes
    the causal rows (verify rows, or the prompt) of the whole batch chose in the same layer (one set: the
    step reads each expert's weights once for all its sequences), plus `extra`. Training: mask block i of a
    sequence chooses among the classes of the clean rows at positions i*b-1 .. i*b+b-2 of the same sequence,
    the rows that would verify its drafts at decode time (batch 1, the tightest budget), plus `extra`."""
    cache_lengths, causal, valid = layout.tensors(device)
    t = torch.arange(rows, device=device)
    if layout.kind == "training":
        b, S = layout.block_size, rows // 2
        blocks = -(-S // b)
        seq = torch.arange(causal.shape[0], device=device)[:, None] * blocks
        window = (t + 1) // b
        source = torch.where((t < S) & (window < blocks), seq + window, -1)
        group = torch.where(t >= S, seq + (t - S) // b, -1)
        return ExpertRestriction(group.reshape(-1), causal.shape[0] * blocks, source.reshape(-1), extra)
    live = t[None, :] < valid[:, None].long()
    verify = live & (t[None, :] < causal[:, None].long())
    group = torch.where(live & ~verify, 0, -1)
    return ExpertRestriction(group.reshape(-1), 1, torch.where(verify, 0, -1).reshape(-1), extra)

