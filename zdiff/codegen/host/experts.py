"""Host side of the MoE experts kernels (template moe_experts.py.jinja): launchers, autograd, AOT signatures,
benchmark hooks.

Every launcher takes the routed slots it works on and picks its entry's config for `n_slots = N * TOP_K` (the
autotune bucket) unless given one. The GEMMs after gate_up run on the dispatch tile `block_m` of their path
(the gate_up config's BLOCK_M): '_small' entries when a group holds a few tokens on average (decode), the
others for training / prefill sized groups. Every buffer a kernel writes comes from torch.empty (the tests
poison it), and no launcher reads anything back to the host.
"""

from __future__ import annotations

import functools

import torch
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
