"""Host side of the MoE kernels (templates moe_experts.py.jinja, moe_router.py.jinja): launchers, autograd,
AOT signatures, benchmark hooks.

Experts: every launcher takes the routed slots it works on and picks its entry's config for `n_slots = N *
TOP_K` (the autotune bucket) unless given one. The GEMMs after gate_up run on the dispatch tile `block_m` of
their path (the gate_up config's BLOCK_M): '_small' entries when a group holds a few tokens on average
(decode), the others for training / prefill sized groups. Router: buckets are tokens. Every buffer a kernel
writes comes from torch.empty (the tests poison it), and no launcher reads anything back to the host.
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
_SLOTS = {"SLOT": _I32, "GROUP": _I32}
_RANGES = {"SLOT": _I32, "START": _I32, "END": _I32}


class ExpertsHost(ModuleHost):
    """The grouped-GEMM experts of one module (constants E, H, I, TOP_K, GROUPS_P2, SMALL_TOKENS_PER_EXPERT)."""

    def __init__(self, module):
        super().__init__(module)
        m = module
        self.E, self.H, self.I, self.top_k, self.groups_p2 = m.E, m.H, m.I, m.TOP_K, m.GROUPS_P2
        self.small_tokens_per_expert = m.SMALL_TOKENS_PER_EXPERT  # at or below this average group size: '_small'
        self.dispatch_kernel, self.gate_up_kernel = self.kernel("dispatch"), self.kernel("gate_up_fwd")
        self.scatter_gemm, self.down_bwd_kernel, self.wgrad = (self.kernel(s) for s in ("scatter_gemm", "down_bwd",
                                                                                        "wgrad"))
        # the dispatch tile of each path in AOT entries and benchmark hooks: the default gate_up BLOCK_M
        self.block_m = {path: m.CONFIGS[f"{self.name}_gate_up{path}"]["BLOCK_M"] for path in ("", "_small")}
        self.bench = {f"{self.name}_dispatch": self._bench_dispatch}
        for path in ("", "_small"):
            self.bench[f"{self.name}_gate_up{path}"] = functools.partial(self._bench_gate_up, path)
            self.bench[f"{self.name}_down{path}"] = functools.partial(self._bench_down, path)
        for entry in ("down_bwd", "dx_bwd", "ddown_bwd", "dgate_up_bwd"):
            self.bench[f"{self.name}_{entry}"] = functools.partial(self._bench_backward, entry)

    def _config(self, entry: str, n_slots: int, override: dict | None) -> dict:
        return self.config(f"{self.name}_{entry}", n_slots, override)

    def path(self, n_slots: int) -> str:
        return "_small" if n_slots <= self.small_tokens_per_expert * self.E else ""

    # --- launchers, one per entry point ----------------------------------------------------------------

    def dispatch(self, experts, block_m, config=None):
        """Sort the slots by group and pad each group to block_m, on the device without host synchronisation.

        experts (N, TOP_K) long, == E for the skip class. Returns (slot (ROWS,) int32, group (ROWS/block_m,)
        int32, start (E+1,) int32, end (E+1,) int32); padding rows hold slot -1. One kernel launch; slots keep
        their order inside a group (deterministic)."""
        E = self.E
        flat = experts.reshape(-1)  # (N*TOP_K,) group of each slot
        n_slots = flat.numel()
        device = flat.device
        rows = triton.cdiv(n_slots + (E + 1) * (block_m - 1), block_m) * block_m  # upper bound, known on the host
        slot = torch.empty(rows, dtype=torch.int32, device=device)
        group = torch.empty(rows // block_m, dtype=torch.int32, device=device)
        start = torch.empty(E + 1, dtype=torch.int32, device=device)
        end = torch.empty(E + 1, dtype=torch.int32, device=device)
        cfg = self._config("dispatch", n_slots, config)
        self.dispatch_kernel[(1,)](flat, slot, group, start, end, n_slots, rows, G=E + 1, GP=self.groups_p2,
                                   BLOCK_M=block_m, **launch_kwargs(cfg))
        return slot, group, start, end

    def gate_up(self, x, gate_up, slot, group, block_m, save, path="", config=None):
        """(gu (ROWS, 2I) pre-activations when `save`, else a dummy; hact (ROWS, I) silu(gate) * up)."""
        rows, I = slot.numel(), self.I
        cfg = self._config("gate_up" + path, x.shape[0] * self.top_k, config)
        hact = torch.empty(rows, I, dtype=x.dtype, device=x.device)
        gu = torch.empty(rows if save else 1, 2 * I, dtype=x.dtype, device=x.device)
        grid = (rows // block_m, triton.cdiv(I, cfg["BLOCK_N"]))
        self.gate_up_kernel[grid](x, gate_up, slot, group, gu, hact, TOP_K=self.top_k, H=self.H, I=I, SKIP=self.E,
                                  SAVE_GU=save, **launch_kwargs(cfg))
        return gu, hact

    def _scatter(self, entry, a, w, slot, group, weights, n, block_m, config, k, w_strides, scale, dtype):
        """A grouped GEMM over the slots' rows of `a` with expert weights `w`, written per slot, then summed over
        the top-k choices of each token in fp32 ((N, H) directly for top-1)."""
        H, top_k = self.H, self.top_k
        cfg = self._config(entry, n * top_k, config)
        y = torch.empty(n * top_k, H, dtype=dtype if top_k == 1 else torch.float32, device=a.device)
        self.scatter_gemm[(slot.numel() // block_m, triton.cdiv(H, cfg["BLOCK_N"]))](
            a, w, slot, group, weights, y, K=k, NOUT=H, W_STRIDE_K=w_strides[0], W_STRIDE_N=w_strides[1], SKIP=self.E,
            SCALE=scale, BLOCK_M=block_m, **launch_kwargs(cfg))
        return y if top_k == 1 else y.view(n, top_k, H).sum(1).to(dtype)

    def down(self, hact, down, slot, group, weights, n, block_m, path="", config=None):
        """The weighted expert outputs summed per token: out (N, H)."""
        return self._scatter("down" + path, hact, down, slot, group, weights, n, block_m, config, self.I, (1, self.I),
                             True, hact.dtype)

    def dx_bwd(self, dgu, gate_up, slot, group, weights, n, block_m, config=None):
        """dx (N, H) = sum over a token's slots of dGU @ gate_up[e]."""
        return self._scatter("dx_bwd", dgu, gate_up, slot, group, weights, n, block_m, config, 2 * self.I,
                             (self.H, 1), False, dgu.dtype)

    def down_bwd(self, dout, down, slot, group, weights, gu, hact, block_m, config=None):
        """(dgu (ROWS, 2I), dweights (N*TOP_K,)) through the down GEMM and the SwiGLU."""
        rows, n_slots = slot.numel(), dout.shape[0] * self.top_k
        cfg = self._config("down_bwd", n_slots, config)
        n_tiles = triton.cdiv(self.I, cfg["BLOCK_N"])
        dgu = torch.empty(rows, 2 * self.I, dtype=hact.dtype, device=dout.device)  # (ROWS, 2I)
        dw_part = torch.empty(n_slots, n_tiles, dtype=torch.float32, device=dout.device)
        self.down_bwd_kernel[(rows // block_m, n_tiles)](
            dout, down, slot, group, weights, gu, hact, dgu, dw_part, TOP_K=self.top_k, H=self.H, I=self.I,
            SKIP=self.E, BLOCK_M=block_m, **launch_kwargs(cfg))
        return dgu, dw_part.sum(1).to(weights.dtype)

    def _wgrad(self, entry, a, b, slot, start, end, weights, like, n_slots, p, q, by_token, config):
        cfg = self._config(entry, n_slots, config)
        dw = torch.empty(*like.shape, dtype=like.dtype, device=like.device)
        self.wgrad[(self.E, triton.cdiv(p, cfg["BLOCK_P"]), triton.cdiv(q, cfg["BLOCK_Q"]))](
            a, b, slot, start, end, weights, dw, TOP_K=self.top_k, P=p, Q=q, A_BY_TOKEN=by_token,
            B_BY_TOKEN=not by_token, SCALE_A=by_token, **launch_kwargs(cfg))
        return dw

    def ddown_bwd(self, dout, hact, slot, start, end, weights, down, config=None):
        """d down (E, H, I): per expert, the weighted dOut rows of its slots times their hact rows."""
        return self._wgrad("ddown_bwd", dout, hact, slot, start, end, weights, down, dout.shape[0] * self.top_k,
                           self.H, self.I, True, config)

    def dgate_up_bwd(self, dgu, x, slot, start, end, weights, gate_up, config=None):
        """d gate_up (E, 2I, H): per expert, its slots' dGU rows times their tokens' x rows."""
        return self._wgrad("dgate_up_bwd", dgu, x, slot, start, end, weights, gate_up, x.shape[0] * self.top_k,
                           2 * self.I, self.H, False, config)

    # --- the forward and backward passes, autograd --------------------------------------------------------

    def forward(self, x, weights, gate_up, down, experts, save):
        """x (N, H), weights (N*TOP_K,) -> out (N, H) and what the backward needs."""
        n = x.shape[0]
        path = self.path(n * self.top_k)
        block_m = self._config("gate_up" + path, n * self.top_k, None)["BLOCK_M"]
        slot, group, start, end = self.dispatch(experts, block_m)
        gu, hact = self.gate_up(x, gate_up, slot, group, block_m, save, path)
        out = self.down(hact, down, slot, group, weights, n, block_m, path)
        return out, (slot, group, start, end, gu, hact, block_m)

    def backward(self, dout, x, weights, gate_up, down, saved):
        """(dx, dweights, dgate_up, ddown)."""
        slot, group, start, end, gu, hact, block_m = saved
        dout = dout.contiguous()
        dgu, dweights = self.down_bwd(dout, down, slot, group, weights, gu, hact, block_m)
        dx = self.dx_bwd(dgu, gate_up, slot, group, weights, x.shape[0], block_m)
        ddown = self.ddown_bwd(dout, hact, slot, start, end, weights, down)
        dgate_up = self.dgate_up_bwd(dgu, x, slot, start, end, weights, gate_up)
        return dx, dweights, dgate_up, ddown

    def apply(self, experts, x, routing):
        """Same as zdiff.runtime.moe.Experts.forward: x (N, H) -> (N, H), autograd through x, routing.weights,
        experts.gate_up and experts.down."""
        E, H, I, top_k = self.E, self.H, self.I, self.top_k
        if x.shape[-1] != H or tuple(experts.gate_up.shape) != (E, 2 * I, H) or tuple(experts.down.shape) != (E, H, I):
            raise ValueError(f"{self.name} was generated for E={E}, H={H}, I={I}; got x {tuple(x.shape)}, "
                             f"gate_up {tuple(experts.gate_up.shape)}, down {tuple(experts.down.shape)}")
        if routing.experts.shape != (x.shape[0], top_k):
            raise ValueError(f"{self.name} was generated for top-{top_k} routing of {x.shape[0]} tokens; "
                             f"got choices {tuple(routing.experts.shape)}")
        x = x.contiguous()
        weights = routing.weights.reshape(-1)
        gate_up, down = experts.gate_up.contiguous(), experts.down.contiguous()
        choices = routing.experts.reshape(-1)
        if not (x.requires_grad or weights.requires_grad or gate_up.requires_grad or down.requires_grad) \
                or not torch.is_grad_enabled():
            return self.forward(x, weights.contiguous(), gate_up, down, choices, save=False)[0]
        return _ExpertsFunction.apply(self, x, weights.contiguous(), gate_up, down, choices)

    # --- ahead-of-time compilation ------------------------------------------------------------------------

    @functools.cached_property
    def aot(self) -> dict:
        """The config's tiles join the fixed constexprs (compile_entry). BLOCK_M of the GEMMs after gate_up is
        the dispatch tile of their path."""
        E, H, I, top_k, name, ptr = self.E, self.H, self.I, self.top_k, self.name, self.pointer
        gate_up = {"TOP_K": top_k, "H": H, "I": I, "SKIP": E, "SAVE_GU": True}
        down = {"K": I, "NOUT": H, "W_STRIDE_K": 1, "W_STRIDE_N": I, "SKIP": E, "SCALE": True}
        dx = {"K": 2 * I, "NOUT": H, "W_STRIDE_K": H, "W_STRIDE_N": 1, "SKIP": E, "SCALE": False}
        wgrad = {"TOP_K": top_k, "A_BY_TOKEN": True, "B_BY_TOKEN": False, "SCALE_A": True}
        dgate_up = {"TOP_K": top_k, "A_BY_TOKEN": False, "B_BY_TOKEN": True, "SCALE_A": False}
        block_m, small = self.block_m[""], self.block_m["_small"]
        return {
            f"{name}_dispatch": aot_entry(self.dispatch_kernel, ptr, {"G": E + 1, "GP": self.groups_p2,
                                                                      "BLOCK_M": block_m},
                                          EXPERTS="*i64", START=_I32, END=_I32, n_slots="i32", rows="i32", **_SLOTS),
            f"{name}_gate_up": aot_entry(self.gate_up_kernel, ptr, gate_up, **_SLOTS),
            f"{name}_gate_up_small": aot_entry(self.gate_up_kernel, ptr, {**gate_up, "SAVE_GU": False}, **_SLOTS),
            f"{name}_down": aot_entry(self.scatter_gemm, ptr, {**down, "BLOCK_M": block_m}, **_SLOTS),
            f"{name}_down_small": aot_entry(self.scatter_gemm, ptr, {**down, "BLOCK_M": small}, **_SLOTS),
            f"{name}_down_bwd": aot_entry(self.down_bwd_kernel, ptr, {"TOP_K": top_k, "H": H, "I": I, "SKIP": E,
                                                                      "BLOCK_M": block_m},
                                          DW_PART="*fp32", **_SLOTS),
            f"{name}_dx_bwd": aot_entry(self.scatter_gemm, ptr, {**dx, "BLOCK_M": block_m}, **_SLOTS),
            f"{name}_ddown_bwd": aot_entry(self.wgrad, ptr, {**wgrad, "P": H, "Q": I}, **_RANGES),
            f"{name}_dgate_up_bwd": aot_entry(self.wgrad, ptr, {**dgate_up, "P": 2 * I, "Q": H}, **_RANGES),
        }

    # --- benchmark hooks: `bucket` routed slots (bucket // TOP_K tokens, uniform top-k routing over the real
    # experts, dispatched once); each calls its entry's launcher with `config`. The GEMMs after gate_up use
    # their path's AOT dispatch tile, the backward entries random saved activations.

    def _bench_routing(self, bucket, device, block_m):
        n = max(1, bucket // self.top_k)
        x = torch.randn(n, self.H, dtype=self.dtype, device=device)
        experts = torch.rand(n, self.E, device=device).argsort(-1)[:, :self.top_k].contiguous()  # no repeats
        weights = torch.rand(n * self.top_k, device=device).to(self.dtype)
        return n, x, experts, weights, self.dispatch(experts, block_m)

    def _bench_weights(self, device):
        E, H, I = self.E, self.H, self.I
        gate_up = torch.randn(E, 2 * I, H, dtype=self.dtype, device=device) * H ** -0.5
        down = torch.randn(E, H, I, dtype=self.dtype, device=device) * I ** -0.5
        return gate_up, down

    def _bench_dispatch(self, bucket, config, device="cuda"):
        n = max(1, bucket // self.top_k)
        experts = torch.rand(n, self.E, device=device).argsort(-1)[:, :self.top_k].contiguous()
        return lambda: self.dispatch(experts, self.block_m[""], config=config)

    def _bench_gate_up(self, path, bucket, config, device="cuda"):
        block_m = config["BLOCK_M"]
        _, x, _, _, (slot, group, _, _) = self._bench_routing(bucket, device, block_m)
        gate_up, _ = self._bench_weights(device)
        return lambda: self.gate_up(x, gate_up, slot, group, block_m, path == "", path, config=config)

    def _bench_down(self, path, bucket, config, device="cuda"):
        block_m = self.block_m[path]
        n, x, _, weights, (slot, group, _, _) = self._bench_routing(bucket, device, block_m)
        _, down = self._bench_weights(device)
        hact = torch.randn(slot.numel(), self.I, dtype=x.dtype, device=device)
        return lambda: self.down(hact, down, slot, group, weights, n, block_m, path, config=config)

    def _bench_backward(self, entry, bucket, config, device="cuda"):
        block_m = self.block_m[""]
        n, x, _, weights, (slot, group, start, end) = self._bench_routing(bucket, device, block_m)
        gate_up, down = self._bench_weights(device)
        rows = slot.numel()
        gu, dgu = (torch.randn(rows, 2 * self.I, dtype=x.dtype, device=device) for _ in range(2))
        hact = torch.randn(rows, self.I, dtype=x.dtype, device=device)
        dout = torch.randn(n, self.H, dtype=x.dtype, device=device)
        launch = {
            "down_bwd": lambda: self.down_bwd(dout, down, slot, group, weights, gu, hact, block_m, config=config),
            "dx_bwd": lambda: self.dx_bwd(dgu, gate_up, slot, group, weights, n, block_m, config=config),
            "ddown_bwd": lambda: self.ddown_bwd(dout, hact, slot, start, end, weights, down, config=config),
            "dgate_up_bwd": lambda: self.dgate_up_bwd(dgu, x, slot, start, end, weights, gate_up, config=config),
        }
        return launch[entry]


class _ExpertsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, host, x, weights, gate_up, down, experts):
        out, saved = host.forward(x, weights, gate_up, down, experts, save=True)
        ctx.host, ctx.saved = host, saved
        ctx.save_for_backward(x, weights, gate_up, down)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weights, gate_up, down = ctx.saved_tensors
        dx, dweights, dgate_up, ddown = ctx.host.backward(dout, x, weights, gate_up, down, ctx.saved)
        return None, dx, dweights, dgate_up, ddown, None


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
