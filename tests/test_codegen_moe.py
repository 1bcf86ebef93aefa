"""Rendered MoE kernels (interpreter on the CPU) against the reference Router / Experts in float64:
choices exactly, weights / logits / outputs and every gradient closely; dispatch layout; config
spaces; ahead-of-time compilation of every default config for gfx942, gfx950 and sm_90 without spills."""

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from conftest import DEVICE, aot_family_reports, assert_close, poison_torch_allocations
from zdiff.codegen.families import moe
from zdiff.codegen.render import load_module, render
from zdiff.runtime.moe import Experts, Router, Routing, expert_load, update_balancing_bias
from zdiff.spec import load_spec


def _spec(preset, hidden, **moe_fields):
    """A small spec: the preset with another hidden size and MoE fields (router fields under 'router')."""
    spec = load_spec(preset)
    m = spec.model
    router = dataclasses.replace(m.moe.router, **moe_fields.pop("router", {}))
    moe_spec = dataclasses.replace(m.moe, router=router, **moe_fields)
    return dataclasses.replace(spec, model=dataclasses.replace(m, hidden_size=hidden, moe=moe_spec))


ZAYA_TOP1 = _spec("zaya1-tiny", 48, num_experts=4, top_k=1, ffn_size=40, router={"hidden_size": 16})
ZAYA_TOP2 = _spec("zaya1-tiny", 40, num_experts=5, top_k=2, ffn_size=24, router={"hidden_size": 24})
LINEAR_TOP2 = _spec("qwen3-moe-tiny", 48, num_experts=5, top_k=2, ffn_size=40)  # normalize_top_k, no skip class
LINEAR_TOP1 = _spec("qwen3-moe-tiny", 40, num_experts=3, top_k=1, ffn_size=24, router={"normalize_top_k": False})
# no skip class, renormalised top-2, a router width that is not a power of two (padded columns in the kernel)
ZAYA_TOP2_NO_SKIP = _spec("zaya1-tiny", 36, num_experts=6, top_k=2, ffn_size=24, skip_expert=False,
                          router={"hidden_size": 20, "normalize_top_k": True})


def _modules(tmp_path, spec):
    out = []
    for plan in moe.plans(spec, "fp32", "cpu"):
        path = tmp_path / f"{plan.name}.py"
        path.write_text(render(plan, spec))
        out.append(load_module(path, plan.name))
    return out  # router module, experts module


# ----------------------------------------------------------------------------------------- router


def _random_router(m, gen, N, layer_idx=1):
    """A float64 reference Router with random parameters, x (N, H) and a router state (N, R) (None for a
    linear router), and a balancing bias on the scale of the probabilities' spread, so that it moves choices
    (favouring the skip class, if any, so that some tokens choose it)."""
    reference = Router(m, layer_idx=layer_idx).double()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.25)
    R = m.moe.router.hidden_size or 1
    x = torch.randn(N, m.hidden_size, generator=gen, dtype=torch.float64) * 2
    state = torch.randn(N, R, generator=gen, dtype=torch.float64) if m.moe.router.kind == "zaya_mlp" else None
    with torch.no_grad():
        spread = torch.softmax(reference(x, state)[0].logits, -1).std()
        reference.balancing_bias.copy_(torch.randn(m.moe.router_classes, generator=gen, dtype=torch.float64) * spread)
        if m.moe.skip_expert:
            reference.balancing_bias[-1] = spread
    return reference, x, state


@pytest.mark.parametrize("spec", [ZAYA_TOP1, ZAYA_TOP2, LINEAR_TOP2, LINEAR_TOP1],
                         ids=["zaya-top1", "zaya-top2", "linear-top2-norm", "linear-top1"])
def test_route_matches_reference_router(tmp_path, poison_allocations, spec):
    router_module, _ = _modules(tmp_path, spec)
    assert router_module.__file__.endswith(".py")
    m = spec.model
    gen = torch.Generator().manual_seed(m.hidden_size * 10 + m.moe.top_k)
    reference, x, state = _random_router(m, gen, N=29)

    x64 = x.clone().requires_grad_()
    s64 = None if state is None else state.clone().requires_grad_()
    ref, ref_state = reference(x64, s64)
    dw = torch.randn(ref.weights.shape, generator=gen, dtype=torch.float64)
    dl = torch.randn(ref.logits.shape, generator=gen, dtype=torch.float64)
    ds = None if ref_state is None else torch.randn(ref_state.shape, generator=gen, dtype=torch.float64)

    kernel_router = copy.deepcopy(reference).float().to(DEVICE)
    xk = x.float().to(DEVICE).requires_grad_()
    sk = None if state is None else state.float().to(DEVICE).requires_grad_()
    got, got_state = router_module.route(kernel_router, xk, sk)

    assert torch.equal(got.experts.cpu(), ref.experts), "choices differ"
    assert got.experts.dtype == torch.long and got.weights.dtype == torch.float32
    # the balancing bias must matter in this case (otherwise the test could not see it ignored)
    unbiased = torch.topk(torch.softmax(ref.logits.detach(), -1), m.moe.top_k, -1).indices
    assert not torch.equal(unbiased, ref.experts)
    if m.moe.skip_expert:
        assert (ref.experts == m.moe.num_experts).any(), "no token chose the skip class"
    assert_close(got.weights, ref.weights, rtol=1e-5, atol=1e-6, what="weights")
    assert_close(got.logits, ref.logits, rtol=1e-5, atol=1e-5, what="logits")
    if ref_state is None:
        assert got_state is None
    else:
        assert_close(got_state, ref_state, rtol=1e-5, atol=1e-5, what="next_state")

    outs64 = [ref.weights, ref.logits] + ([] if ref_state is None else [ref_state])
    grads = [dw, dl] + ([] if ds is None else [ds])
    torch.autograd.backward(outs64, grads)
    outs = [got.weights, got.logits] + ([] if got_state is None else [got_state])
    torch.autograd.backward(outs, [g.float().to(DEVICE) for g in grads])
    assert_close(xk.grad, x64.grad, rtol=1e-4, atol=1e-5, what="dx")
    if state is not None:
        assert_close(sk.grad, s64.grad, rtol=1e-4, atol=1e-5, what="dstate")
    for (name, p_ref), p in zip(reference.named_parameters(), kernel_router.parameters()):
        assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, what=f"d{name}")


# (spec, tokens, router layer (0: no state input), how the gradient is off, seed: one where the balancing bias
# moves a choice and, with a skip class, some token chooses it; few tokens make that rarer)
FUSED_CASES = [
    (ZAYA_TOP1, 29, 1, "no_grad", 0),
    (ZAYA_TOP1, 5, 0, "no_grad", 7),
    (ZAYA_TOP2, 37, 1, "frozen", 0),
    (ZAYA_TOP2_NO_SKIP, 21, 1, "no_grad", 0),
    (ZAYA_TOP2_NO_SKIP, 16, 0, "frozen", 0),
]


@pytest.mark.parametrize("spec,N,layer,mode,seed", FUSED_CASES, ids=[
    f"k{s.model.moe.top_k}-{'skip' if s.model.moe.skip_expert else 'noskip'}-n{n}-layer{layer}-{mode}"
    for s, n, layer, mode, _ in FUSED_CASES])
def test_mlp_router_without_grad_is_one_kernel_matching_reference(tmp_path, monkeypatch, spec, N, layer, mode,
                                                                   seed):
    """No gradient needed (grad mode off, or nothing requires grad): the whole MLP router is the one fused kernel
    (no torch op runs), on ragged token counts, with and without the previous layer's state, equal to the float64
    reference: choices exactly, weights, logits and the next state closely; every output starts poisoned."""
    from launch_counter import count_launches

    router_module, _ = _modules(tmp_path, spec)
    m = spec.model
    gen = torch.Generator().manual_seed(seed)
    reference, x, state = _random_router(m, gen, N, layer_idx=layer)
    with torch.no_grad():
        ref, ref_state = reference(x, state)
    kernel_router = copy.deepcopy(reference).float().to(DEVICE)
    xk, sk = x.float().to(DEVICE), state.float().to(DEVICE)
    if mode == "frozen":
        kernel_router.requires_grad_(False)
    context = torch.enable_grad if mode == "frozen" else torch.no_grad
    with context(), count_launches(execute=False) as counter:
        router_module.route(kernel_router, xk, sk)
    assert dict(counter.triton) == {f"{moe.router_name(spec)}_mlp_fwd": 1} and not counter.torch_ops, counter

    poison_torch_allocations(monkeypatch)  # after the count: filling a buffer is a torch op
    with context():
        got, got_state = router_module.route(kernel_router, xk, sk)
    assert torch.equal(got.experts.cpu(), ref.experts), "choices differ"
    unbiased = torch.topk(torch.softmax(ref.logits, -1), m.moe.top_k, -1).indices
    assert not torch.equal(unbiased, ref.experts)  # the balancing bias moves choices here
    if m.moe.skip_expert:
        assert (ref.experts == m.moe.num_experts).any(), "no token chose the skip class"
    assert_close(got.weights, ref.weights, rtol=1e-5, atol=1e-6, what="weights")
    assert_close(got.logits, ref.logits, rtol=1e-5, atol=1e-5, what="logits")
    assert_close(got_state, ref_state, rtol=1e-5, atol=1e-5, what="next_state")


def test_balancing_statistics_and_update_match_reference(tmp_path):
    router_module, _ = _modules(tmp_path, ZAYA_TOP2)
    m = ZAYA_TOP2.model
    gen = torch.Generator().manual_seed(3)
    experts = torch.randint(0, m.moe.router_classes, (41, 2), generator=gen)
    routing = Routing(experts, torch.rand(41, 2, generator=gen), torch.randn(41, m.moe.router_classes, generator=gen))
    load = router_module.expert_load(routing)
    assert torch.equal(load, expert_load([routing], m.moe.num_experts)[0])
    routers = [Router(m, 1), Router(m, 1)]
    with torch.no_grad():
        routers[0].balancing_bias.copy_(torch.randn(m.moe.router_classes, generator=gen))
    routers[1].load_state_dict(routers[0].state_dict())
    model = SimpleNamespace(spec=m, layers=[SimpleNamespace(moe=SimpleNamespace(router=routers[0]))])
    update_balancing_bias(model, load[None])
    router_module.update_balancing_bias(routers[1], load)
    assert torch.equal(routers[1].balancing_bias, routers[0].balancing_bias)
    assert router_module.UPDATE_RATE == m.moe.balancing_bias.update_rate


RESTRICT_CASES = [(ZAYA_TOP1, 29, "grad", 0), (ZAYA_TOP1, 13, "no_grad", 1), (ZAYA_TOP2, 37, "no_grad", 0),
                  (LINEAR_TOP2, 21, "grad", 1), (ZAYA_TOP2_NO_SKIP, 30, "grad", 1), (LINEAR_TOP1, 17, "no_grad", 0)]


@pytest.mark.parametrize("spec,N,mode,extra", RESTRICT_CASES, ids=[
    f"{s.model.moe.router.kind}-k{s.model.moe.top_k}-{'skip' if s.model.moe.skip_expert else 'noskip'}-n{n}-{mode}"
    f"-extra{x}" for s, n, mode, x in RESTRICT_CASES])
def test_route_under_expert_budget_matches_reference(tmp_path, poison_allocations, spec, N, mode, extra):
    """The draft-row expert budget (`_restrict`): two sets, each loaded by a few free rows and used by others,
    ragged rows with no set; choices exactly as the float64 reference, the free rows' choices exactly as
    without the budget, the restricted rows' inside their set, weights and (training path) every gradient
    closely; the budget moves some choice (teeth)."""
    from zdiff.runtime.moe import ExpertRestriction

    router_module, _ = _modules(tmp_path, spec)
    m = spec.model
    gen = torch.Generator().manual_seed(N + extra)
    reference, x, state = _random_router(m, gen, N)
    with torch.no_grad():
        free, _ = reference(x, state)
    # the rows of the rarest choice load set 0, those of the next rarest set 1 (so the sets leave out the
    # popular experts and the budget moves choices); the rest use set 0, set 1 or neither at random
    choices = [tuple(row) for row in free.experts.tolist()]
    rare = sorted(set(choices), key=lambda c: (choices.count(c), c))
    role = torch.randint(2, 5, (N,), generator=gen)  # 0, 1: load set 0 / 1; 2, 3: use set 0 / 1; 4: neither
    for s, c in enumerate(rare[:2]):
        role[[i for i, row in enumerate(choices) if row == c][:2]] = s

    def restriction(extra):
        return ExpertRestriction(torch.where((role == 2) | (role == 3), role - 2, -1), 2,
                                 torch.where(role < 2, role, -1), extra)

    restrict = restriction(extra)
    grad = mode == "grad"
    x64 = x.clone().requires_grad_(grad)
    ref, _ = reference(x64, state, restrict)
    free_rows = restrict.group < 0
    assert torch.equal(ref.experts[free_rows], free.experts[free_rows])
    with torch.no_grad():  # teeth: the budget moves choices, and the extra expert moves some back
        assert not torch.equal(reference(x, state, restriction(0))[0].experts, free.experts)
        if extra:
            assert not torch.equal(ref.experts, reference(x, state, restriction(0))[0].experts)
    allowed = restrict.allowed(free.experts, free.logits, m.moe.num_experts, m.moe.skip_expert)
    held = ~free_rows
    assert allowed[restrict.group[held, None].expand(-1, m.moe.top_k), ref.experts[held]].all()

    kernel_router = copy.deepcopy(reference).float().to(DEVICE)
    xk = x.float().to(DEVICE).requires_grad_(grad)
    sk = None if state is None else state.float().to(DEVICE)
    context = torch.enable_grad if grad else torch.no_grad
    with context():
        got, _ = router_module.route(kernel_router, xk, sk, None, restrict)
    assert torch.equal(got.experts.cpu(), ref.experts), "choices differ"
    assert_close(got.weights, ref.weights, rtol=1e-5, atol=1e-6, what="weights")
    if grad:
        dw = torch.randn(ref.weights.shape, generator=gen, dtype=torch.float64)
        ref.weights.backward(dw)
        got.weights.backward(dw.float().to(DEVICE))
        assert_close(xk.grad, x64.grad, rtol=1e-4, atol=1e-5, what="dx")
        for (name, p_ref), p in zip(reference.named_parameters(), kernel_router.parameters()):
            if p_ref.grad is not None:
                assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, what=f"d{name}")


# ---------------------------------------------------------------------------------------- experts


def _routing(kind, N, E, k, skip, gen):
    """(N, k) distinct choices per token for one of the routing scenarios."""
    classes = E + int(skip)
    if kind == "unbalanced":  # expert 1 gets nothing, expert 0 most, some skip choices
        p = torch.tensor([6.0, 0.0, 1.0] + [0.5] * (E - 3) + ([1.0] if skip else []))
    elif kind == "one_expert":
        p = torch.zeros(classes)
        p[E - 1] = 1.0
    elif kind == "all_skip":
        p = torch.zeros(classes)
        p[E] = 1.0
    else:
        raise ValueError(kind)
    if k == 1 or kind != "unbalanced":
        first = torch.multinomial(p, N, replacement=True, generator=gen)
        if k == 1:
            return first[:, None]
        # the second choice of a token is another class (any of the others, zero-token expert excluded)
        other = torch.ones(classes)
        other[1] = 0
        other[first[0]] = 0
        second = torch.multinomial(other, N, replacement=True, generator=gen)
        return torch.stack([first, second], 1)
    return torch.stack([torch.multinomial(p, k, replacement=False, generator=gen) for _ in range(N)])


CASES = [  # (spec, scenario, tokens, path)
    (ZAYA_TOP1, "unbalanced", 45, "large"),
    (ZAYA_TOP1, "unbalanced", 7, "small"),
    (ZAYA_TOP1, "one_expert", 21, "large"),
    (ZAYA_TOP1, "all_skip", 9, "small"),
    (LINEAR_TOP2, "unbalanced", 23, "large"),
    (ZAYA_TOP2, "unbalanced", 13, "small"),
    (LINEAR_TOP2, "one_expert", 6, "small"),
]


@pytest.mark.parametrize("spec,scenario,N,path", CASES,
                         ids=[f"k{s.model.moe.top_k}-{c}-{n}-{p}" for s, c, n, p in CASES])
def test_experts_forward_matches_reference(tmp_path, poison_allocations, spec, scenario, N, path):
    _, module = _modules(tmp_path, spec)
    module.HOST.small_tokens_per_expert = 10**6 if path == "small" else 0
    m = spec.model
    E, H, k = m.moe.num_experts, m.hidden_size, m.moe.top_k
    gen = torch.Generator().manual_seed(N * 7 + k)
    reference = Experts(m).double()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.2)
    choices = _routing(scenario, N, E, k, m.moe.skip_expert, gen)
    weights = torch.rand(N, k, generator=gen, dtype=torch.float64) + 0.1
    if m.moe.skip_expert:
        weights = weights.masked_fill(choices == E, 0)
    if scenario == "unbalanced":
        counts = torch.bincount(choices.flatten(), minlength=E + 1)
        assert counts[1] == 0 and counts[0] > counts[2:E].max(), counts
    x = torch.randn(N, H, generator=gen, dtype=torch.float64)
    dy = torch.randn(N, H, generator=gen, dtype=torch.float64)
    logits = torch.randn(N, m.moe.router_classes, generator=gen, dtype=torch.float64)

    x64, w64 = x.clone().requires_grad_(), weights.clone().requires_grad_()
    y64 = reference(x64, Routing(choices, w64, logits))
    if scenario == "all_skip":  # the reference output does not depend on anything: every gradient is zero
        for t in (x64, w64, *reference.parameters()):
            t.grad = torch.zeros_like(t)
    else:
        y64.backward(dy)

    kernel_experts = copy.deepcopy(reference).float().to(DEVICE)
    kernel_experts.zero_grad()
    xk = x.float().to(DEVICE).requires_grad_()
    wk = weights.float().to(DEVICE).requires_grad_()
    y = module.experts_forward(kernel_experts, xk, Routing(choices.to(DEVICE), wk, logits.float().to(DEVICE)))
    y.backward(dy.float().to(DEVICE))

    if scenario == "all_skip":
        assert y64.abs().max() == 0
    else:
        assert y64.abs().max() > 0.1
    assert_close(y, y64, rtol=1e-5, atol=1e-5, what="out")
    assert_close(xk.grad, x64.grad, rtol=1e-4, atol=1e-5, what="dx")
    assert_close(wk.grad, w64.grad, rtol=1e-4, atol=1e-5, what="dweights")
    assert_close(kernel_experts.gate_up.grad, reference.gate_up.grad, rtol=1e-4, atol=1e-5, what="dgate_up")
    assert_close(kernel_experts.down.grad, reference.down.grad, rtol=1e-4, atol=1e-5, what="ddown")


def test_experts_without_grad_take_the_inference_path(tmp_path, poison_allocations):
    _, module = _modules(tmp_path, LINEAR_TOP1)
    m = LINEAR_TOP1.model
    gen = torch.Generator().manual_seed(5)
    reference = Experts(m).double()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.2)
    choices = torch.randint(0, m.moe.num_experts, (11, 1), generator=gen)
    weights = torch.rand(11, 1, generator=gen, dtype=torch.float64)
    x = torch.randn(11, m.hidden_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected = reference(x, Routing(choices, weights, weights))
        routing = Routing(choices, weights.float(), weights)
        got = module.experts_forward(copy.deepcopy(reference).float(), x.float(), routing)
    assert not got.requires_grad
    assert_close(got, expected, rtol=1e-5, atol=1e-5, what="out")


@pytest.mark.parametrize("block_m", [16, 64])
def test_dispatch_sorts_pads_and_drops_nothing(tmp_path, block_m):
    _, module = _modules(tmp_path, ZAYA_TOP2)
    E = ZAYA_TOP2.model.moe.num_experts
    gen = torch.Generator().manual_seed(block_m)
    choices = _routing("unbalanced", 37, E, 2, True, gen)
    slot, group, start, end = module.dispatch(choices, block_m)
    assert slot.numel() % block_m == 0 and slot.numel() == group.numel() * block_m
    assert slot.numel() == -(-(37 * 2 + (E + 1) * (block_m - 1)) // block_m) * block_m
    flat = choices.flatten()
    assert sorted(slot[slot >= 0].tolist()) == list(range(74))  # every slot once, skip slots included
    for g in range(E + 1):
        s, e = int(start[g]), int(end[g])
        assert s % block_m == 0 and e % block_m == 0
        held = slot[s:e]
        members = torch.nonzero(flat == g).flatten()
        assert torch.equal(held[held >= 0].long(), members)  # sorted by slot: deterministic order
        assert (held[len(members):] == -1).all()
        assert (group[s // block_m: e // block_m] == g).all()
    assert (slot[int(end[E]):] == -1).all() and (group[int(end[E]) // block_m:] == E + 1).all()


# ------------------------------------------------------------------------------ plans and configs


def test_plans_names_and_config_spaces():
    spec = load_spec("zaya1-8b")
    names = [p.name for p in moe.plans(spec, "bf16", "h200")]
    assert names == ["moe_router_c17_k1", "moe_experts_e16_h2048_i2048_k1"]
    for target in ("mi300x", "mi355x", "h100", "h200"):
        for plan in moe.plans(spec, "bf16", target):
            for kernel, default in plan.configs.items():
                space = moe.config_space(plan, kernel, target)
                assert default in space, (target, kernel, default)
                amd = {k for c in space for k in c} & {"waves_per_eu", "matrix_instr_nonkdim", "kpack"}
                if target.startswith("mi") and plan.template == "moe_experts.py.jinja" and "dispatch" not in kernel:
                    assert amd == {"waves_per_eu", "matrix_instr_nonkdim", "kpack"}
                    if target == "mi355x":
                        assert {c["kpack"] for c in space} == {1}
                else:
                    assert not amd
                assert moe.buckets(plan, kernel)


def test_moe_kernels_compile_ahead_of_time_without_spills():
    """ZAYA1-8B shapes, every entry point's default config, gfx942 / gfx950 / sm_90 (real compilation)."""
    reports = aot_family_reports("moe")
    spec = load_spec("zaya1-8b")
    entries = {e for plan in moe.plans(spec, "bf16", "h200") for e in plan.configs}
    assert len(entries) == 13
    for target, arch in (("mi300x", "gfx942"), ("mi355x", "gfx950"), ("h200", "sm_90")):
        mine = [r for r in reports if r["target"] == target]
        assert {r["entry"] for r in mine} == entries and {r["arch"] for r in mine} == {arch}
        for r in mine:
            assert r["spills"] == 0 and r["registers"] > 0 and r["occupancy"] >= 1, r
            gemm = r["entry"].endswith("_mlp_fwd") or not ("_router_" in r["entry"] or r["entry"].endswith("_dispatch"))
            if gemm:
                assert r["matrix_instructions"], r  # the GEMMs use MFMA / mma / wgmma
