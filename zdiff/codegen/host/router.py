"""Host side of the MoE router kernels (template moe_router.py.jinja): launchers, autograd, AOT signatures,
benchmark hooks. Buckets are tokens. Every buffer a kernel writes comes from torch.empty (the tests poison it),
and no launcher reads anything back to the host.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton

from ..aot import aot_entry
from ..launch import launch_kwargs
from . import ModuleHost

_I32 = "*i32"


class RouterHost(ModuleHost):
    """The router tail (softmax, balancing bias, top-k, weights) and, for ZAYA1's MLP router, the whole router
    in one forward kernel (module constants KIND, C, E, TOP_K, BLOCK_C, BLOCK_K, PROBS_FP32, NORMALIZE,
    SKIP_EXPERT, UPDATE_RATE; H, R, BLOCK_R for the MLP router). Autotune buckets are tokens."""

    def __init__(self, module):
        super().__init__(module)
        m = module
        self.kind, self.C, self.E, self.top_k, self.update_rate = m.KIND, m.C, m.E, m.TOP_K, m.UPDATE_RATE
        self.fixed = {"C": m.C, "E": m.E, "TOP_K": m.TOP_K, "BLOCK_C": m.BLOCK_C, "BLOCK_K": m.BLOCK_K,
                      "PROBS_FP32": m.PROBS_FP32, "NORMALIZE": m.NORMALIZE, "SKIP_EXPERT": m.SKIP_EXPERT}
        self.fwd, self.bwd, self.restrict = self.kernel("fwd"), self.kernel("bwd"), self.kernel("restrict")
        self.bench = {f"{self.name}_fwd": self._bench_fwd, f"{self.name}_bwd": self._bench_bwd,
                      f"{self.name}_restrict": self._bench_restrict}
        if self.kind == "zaya_mlp":
            self.H, self.R = m.H, m.R
            self.mlp_fixed = {**self.fixed, "H": m.H, "R": m.R, "BLOCK_R": m.BLOCK_R}
            self.mlp_fwd = self.kernel("mlp_fwd")
            self.bench[f"{self.name}_mlp_fwd"] = self._bench_mlp_fwd

    # --- launchers --------------------------------------------------------------------------------------

    def tail_forward(self, logits, bias, config=None, group=None, allowed=None):
        """(experts (N, TOP_K) int64, weights (N, TOP_K)) of logits (N, C), unit column stride; bias (C,) fp32.
        With group (N,) int32 and allowed (G, C) int8 (the `_restrict` entry): row n with group[n] = g >= 0
        chooses only among the classes allowed[g] marks."""
        n = logits.shape[0]
        experts = torch.empty(n, self.top_k, dtype=torch.long, device=logits.device)
        weights = torch.empty(n, self.top_k, dtype=logits.dtype, device=logits.device)
        entry = "fwd" if group is None else "restrict"
        cfg = self.config(f"{self.name}_{entry}", n, config)
        if n and group is None:
            self.fwd[(n,)](logits, bias, experts, weights, logits.stride(0), **self.fixed, **launch_kwargs(cfg))
        elif n:
            self.restrict[(n,)](logits, bias, group, allowed, experts, weights, logits.stride(0), **self.fixed,
                                **launch_kwargs(cfg))
        return experts, weights

    def tail_backward(self, logits, experts, dweights, config=None):
        """dlogits (N, C) through the routing weights (the choice has no gradient)."""
        n = logits.shape[0]
        dlogits = torch.empty(*logits.shape, dtype=logits.dtype, device=logits.device)
        cfg = self.config(f"{self.name}_bwd", n, config)
        if n:
            self.bwd[(n,)](logits, experts, dweights, dlogits, logits.stride(0), dlogits.stride(0), **self.fixed,
                           **launch_kwargs(cfg))
        return dlogits

    def mlp_forward(self, x, w_down, b_down, state, state_scale, norm_w, eps, w1, b1, w2, b2, w_out, bias,
                    config=None):
        """The MLP router in one kernel, no autograd: x (N, H), state (N, R) or None (then state_scale is
        unused) -> (experts (N, TOP_K) int64, weights (N, TOP_K), logits (N, C), next_state (N, R)).
        Weights are nn.Linear's (contiguous); x and state need unit column strides."""
        n = x.shape[0]
        has_state = state is not None
        next_state = torch.empty(n, self.R, dtype=x.dtype, device=x.device)
        logits = torch.empty(n, self.C, dtype=x.dtype, device=x.device)
        experts = torch.empty(n, self.top_k, dtype=torch.long, device=x.device)
        weights = torch.empty(n, self.top_k, dtype=x.dtype, device=x.device)
        cfg = self.config(f"{self.name}_mlp_fwd", n, config)
        state = state if has_state else x
        if n:
            self.mlp_fwd[(triton.cdiv(n, cfg["BLOCK_M"]),)](
                x, w_down, b_down, state, state_scale if has_state else b_down, norm_w, w1, b1, w2, b2, w_out, bias,
                next_state, logits, experts, weights, n, x.stride(0), state.stride(0), eps, **self.mlp_fixed,
                HAS_STATE=has_state, **launch_kwargs(cfg))
        return experts, weights, logits, next_state

    # --- the model-facing functions ------------------------------------------------------------------------

    def route(self, router, x, state, rms_norm=None, restrict=None):
        """Same as zdiff.runtime.moe.Router.forward: x (N, H), state (N, R) or None -> (Routing, next_state).

        rms_norm: the generated RMSNorm of the router width (`rms_norm(x, weight, eps)`), else the module's own
        (the autograd path; without a gradient the MLP router is one kernel). restrict: a
        zdiff.runtime.moe.ExpertRestriction (the draft rows' expert budget): after the free choice, its allowed
        sets come from the free rows' choices (torch ops on the device) and the `_restrict` tail chooses again."""
        from ...runtime.moe import Routing

        if router.kind != self.kind or router.balancing_bias.numel() != self.C or router.moe.top_k != self.top_k:
            raise ValueError(f"{self.name} was generated for a {self.kind} router with {self.C} classes, "
                             f"top-{self.top_k}; got {router.kind} with {router.balancing_bias.numel()} classes, "
                             f"top-{router.moe.top_k}")
        if self.kind == "linear":
            logits = F.linear(x, router.weight)  # (N, C)
            next_state = None
        elif not _needs_grad(router, x, state):
            experts, weights, logits, next_state = self.mlp_route(router, x, state)
            if restrict is not None:
                group, allowed = self._restriction(restrict, experts, logits)
                experts, weights = self.tail_forward(logits, router.balancing_bias.float(), group=group,
                                                     allowed=allowed)
            return Routing(experts, weights, logits), next_state
        else:
            hidden = F.linear(x, router.down_proj.weight, router.down_proj.bias)  # (N, R)
            if router.state_scale is not None and state is not None:
                hidden = torch.addcmul(hidden, state, router.state_scale)  # hidden + state * scale, one kernel
            next_state = hidden
            normed = router.norm(hidden) if rms_norm is None else rms_norm(hidden, router.norm.weight,
                                                                            router.norm.eps)
            hidden = F.gelu(F.linear(normed, router.fc1.weight, router.fc1.bias))
            hidden = F.gelu(F.linear(hidden, router.fc2.weight, router.fc2.bias))
            logits = F.linear(hidden, router.out_proj.weight)  # (N, C)
        group = allowed = None
        if restrict is not None:
            with torch.no_grad():
                free, _ = self.tail_forward(logits.detach().contiguous(), router.balancing_bias.float().contiguous())
            group, allowed = self._restriction(restrict, free, logits.detach())
        weights, experts = _RouterTailFunction.apply(self, logits, router.balancing_bias, group, allowed)
        return Routing(experts, weights, logits), next_state

    def _restriction(self, restrict, experts, logits):
        """(group (N,) int32, allowed (G, C) int8) of an ExpertRestriction given the free choices."""
        allowed = restrict.allowed(experts, logits, self.E, self.module.SKIP_EXPERT)
        return restrict.group.to(device=logits.device, dtype=torch.int32), allowed.to(torch.int8).contiguous()

    def mlp_route(self, router, x, state):
        """The MLP router module in one kernel, forward only (see `mlp_forward`)."""
        has_state = router.state_scale is not None and state is not None
        down, fc1, fc2 = router.down_proj, router.fc1, router.fc2
        return self.mlp_forward(
            _unit_columns(x), down.weight.contiguous(), down.bias, _unit_columns(state) if has_state else None,
            router.state_scale, router.norm.weight, router.norm.eps, fc1.weight.contiguous(), fc1.bias,
            fc2.weight.contiguous(), fc2.bias, router.out_proj.weight.contiguous(), router.balancing_bias.float())

    def expert_load(self, routing):
        """(E,) fp32 token-choice counts of the real experts, on the device (no host synchronisation)."""
        flat = routing.experts.reshape(-1)
        counts = torch.zeros(self.C, dtype=torch.float32, device=flat.device)
        return counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))[:self.E]

    @torch.no_grad()
    def update_balancing_bias(self, router, load, update_rate=None):
        """The 'sign' rule on one router: b_e += update_rate * sign(mean(load) - load_e) for the real experts
        (update_rate: the spec's by default). `load` (E,) must already be summed over data-parallel ranks; the
        skip class keeps its bias."""
        rate = self.update_rate if update_rate is None else update_rate
        bias = router.balancing_bias
        bias[:self.E] += rate * torch.sign(load.mean() - load).to(bias)

    # --- ahead-of-time compilation ----------------------------------------------------------------------------

    @functools.cached_property
    def aot(self) -> dict:
        entries = {
            f"{self.name}_fwd": aot_entry(self.fwd, self.pointer, self.fixed, BIAS="*fp32", EXPERTS="*i64",
                                          stride_l="i32"),
            f"{self.name}_bwd": aot_entry(self.bwd, self.pointer, self.fixed, EXPERTS="*i64", stride_l="i32",
                                          stride_dl="i32"),
            f"{self.name}_restrict": aot_entry(self.restrict, self.pointer, self.fixed, BIAS="*fp32", GROUP=_I32,
                                               ALLOWED="*i8", EXPERTS="*i64", stride_l="i32"),
        }
        if self.kind == "zaya_mlp":
            entries[f"{self.name}_mlp_fwd"] = aot_entry(
                self.mlp_fwd, self.pointer, {**self.mlp_fixed, "HAS_STATE": True}, BIAS="*fp32", EXPERTS="*i64",
                N="i32", stride_x="i32", stride_s="i32", eps="fp32")
        return entries

    # --- benchmark hooks: `bucket` tokens; each calls its entry's launcher with `config` ----------------------

    def _bench_fwd(self, bucket, config, device="cuda"):
        logits = torch.randn(bucket, self.C, dtype=self.dtype, device=device)
        bias = torch.zeros(self.C, dtype=torch.float32, device=device)
        return lambda: self.tail_forward(logits, bias, config=config)

    def _bench_restrict(self, bucket, config, device="cuda"):
        """Half the rows restricted (a decode step's draft rows) to half the classes."""
        logits = torch.randn(bucket, self.C, dtype=self.dtype, device=device)
        bias = torch.zeros(self.C, dtype=torch.float32, device=device)
        group = (torch.arange(bucket, device=device, dtype=torch.int32) % 2) - 1
        allowed = (torch.arange(self.C, device=device) % 2 == 0).to(torch.int8)[None, :]
        return lambda: self.tail_forward(logits, bias, config=config, group=group, allowed=allowed)

    def _bench_bwd(self, bucket, config, device="cuda"):
        logits = torch.randn(bucket, self.C, dtype=self.dtype, device=device)
        experts = torch.rand(bucket, self.C, device=device).argsort(-1)[:, :self.top_k].contiguous()  # no repeats
        dweights = torch.randn(bucket, self.top_k, dtype=self.dtype, device=device)
        return lambda: self.tail_backward(logits, experts, dweights, config=config)

    def _bench_mlp_fwd(self, bucket, config, device="cuda"):
        H, R, C = self.H, self.R, self.C

        def randn(*shape, scale=1.0):
            return torch.randn(*shape, dtype=self.dtype, device=device) * scale
        x, state = randn(bucket, H), randn(bucket, R)
        w_down = randn(R, H, scale=H ** -0.5)
        w1, w2, w_out = (randn(rows, R, scale=R ** -0.5) for rows in (R, R, C))
        b_down, scale, norm_w, b1, b2 = (randn(R) for _ in range(5))
        bias = torch.zeros(C, dtype=torch.float32, device=device)
        return lambda: self.mlp_forward(x, w_down, b_down, state, scale, norm_w, 1e-5, w1, b1, w2, b2, w_out, bias,
                                        config=config)


def _needs_grad(router, x, state) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or (state is not None and state.requires_grad) or any(
        p.requires_grad for p in router.parameters())


def _unit_columns(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class _RouterTailFunction(torch.autograd.Function):
    """logits (N, C) -> (weights (N, TOP_K), experts (N, TOP_K)); gradient through the weights."""

    @staticmethod
    def forward(ctx, host, logits, bias, group=None, allowed=None):
        logits = logits.contiguous()
        experts, weights = host.tail_forward(logits, bias.float().contiguous(), group=group, allowed=allowed)
        ctx.host = host
        ctx.save_for_backward(logits, experts)
        ctx.mark_non_differentiable(experts)
        return weights, experts

    @staticmethod
    def backward(ctx, dweights, _dexperts):
        logits, experts = ctx.saved_tensors
        return None, ctx.host.tail_backward(logits, experts, dweights.contiguous()), None, None, None
