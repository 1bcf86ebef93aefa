"""The engine's MoE-aware speculation options, through whole engine runs: a verify length d below b - 1 (drafts
past d dropped) and the draft rows' expert budget (they route only among the experts the step's verify rows
chose). Both are lossless: greedy TiDAR equals greedy AR with them on, the lossless sampler matches the exact AR
distribution (chi-square, with a power check under the same options), while the budget really changed the
drafts (the test has teeth). Also: per-request caps, the policy's (P, d, budget) choice and its report."""

import pytest
import torch

from generation_helpers import chi_square_p_value, counts_against, exact_ar_distribution, tiny_moe16_model
from zdiff.errors import ZdiffError
from zdiff.generation import SamplingParams, decode_step, verify
from zdiff.generation.engine import Engine, RequestParams
from zdiff.generation.oracle import generate
from zdiff.generation.proposals import ProposalPolicy, StepOption
from zdiff.spec import load_spec

PROMPTS = [[1, 2, 3, 4, 5], [6], [2, 2, 4, 1, 0, 3, 5, 6, 1]]
PROMPT, N_SAMPLES = [1, 2, 3], 4000


@pytest.fixture(scope="module")
def moe16():
    return tiny_moe16_model()


def _run(model, spec, prompts, params, **engine_kw):
    engine = Engine(model, diffusion=spec.diffusion, max_len=64, **engine_kw)
    ids = [engine.add(p, params(i) if callable(params) else params) for i, p in enumerate(prompts)]
    results = engine.run()
    return [results[i].tokens for i in ids], [results[i].accepted for i in ids], engine


@pytest.mark.parametrize("d", [1, 2, 3])
def test_greedy_tidar_with_budget_and_verify_length_equals_greedy_ar(moe16, d):
    model, spec = moe16
    ar = generate(model, PROMPTS, SamplingParams(sampler="greedy"), diffusion=spec.diffusion, mode="ar",
                  max_new_tokens=15).tokens
    greedy = RequestParams(max_new_tokens=15, sampler="greedy")
    free_tokens, free, _ = _run(model, spec, PROMPTS, greedy, max_slots=2, proposals=3, verify_lengths=(d,))
    held_tokens, held, engine = _run(model, spec, PROMPTS, greedy, max_slots=2, proposals=3, verify_lengths=(d,),
                                     expert_budgets=(0,))
    assert free_tokens == held_tokens == ar
    assert sum(map(sum, held)) > 0 and max(max(a) for a in held) <= d  # drafts accepted, never more than d a step
    assert held != free  # the budget changed the drafts (q), not the tokens (p)
    assert {o.label for o in engine.stats.steps_used} <= {f"P3_d{d}_m0", "ar"}


def test_lossless_engine_with_budget_and_truncated_verify_matches_exact_ar_distribution(moe16, monkeypatch):
    """4000 requests of 3 new tokens, 1000 slots, every step with the budget on and d = 1 of b - 1 = 3 drafts (x_3
    is then the bonus draw after d_1, never d_2 verified): the chi-square test against exact enumeration of AR
    sampling passes; with a verifier that accepts every draft under the same options it fails (power)."""
    model, spec = moe16
    with torch.no_grad():
        table = exact_ar_distribution(model, PROMPT, 3, SamplingParams(sampler="lossless", banned=(7,)))

    def sample(**kw):
        engine = Engine(model, diffusion=spec.diffusion, max_slots=1000, max_len=16, proposals=2,
                        verify_lengths=(1,), **kw)
        ids = [engine.add(PROMPT, RequestParams(max_new_tokens=3, seed=11 + i)) for i in range(N_SAMPLES)]
        results = engine.run()
        return [results[i].tokens for i in ids], engine

    tokens, engine = sample(expert_budgets=(0,))
    _, free = sample()
    hist = engine.stats.tokens_per_step
    assert hist[1] > 0.05 * sum(hist) and hist[2:] == [0, 0]  # drafts accepted, at most d = 1 per step
    assert hist != free.stats.tokens_per_step  # the budget changed the drafts
    assert chi_square_p_value(*counts_against(tokens, table)) > 1e-3

    verify_slots = verify.verify_slots

    def accept_all(backend, ar_logits, draft_logits, drafts, num_drafts, first_position, *rest, banned=None):
        _, token = verify_slots(backend, ar_logits, draft_logits, drafts, num_drafts, first_position, *rest,
                                banned=banned)
        return num_drafts, token  # every offered draft kept (the bonus token drawn as if all were verified)
    monkeypatch.setattr(decode_step, "verify_slots", accept_all)
    tokens, _ = sample(expert_budgets=(0,))
    assert chi_square_p_value(*counts_against(tokens, table)) < 1e-6


def test_per_request_caps_are_kept_and_checked(moe16):
    model, spec = moe16
    kw = dict(max_slots=3, proposals=3, verify_lengths=(1, 3), expert_budgets=(None, 0))
    lengths = (12, 30, 12)  # the request that turns the budget off runs longest: it shares every step

    def capped(i):
        return RequestParams(max_new_tokens=lengths[i], sampler="greedy", verify_length=1 if i == 0 else 0,
                             expert_budget="off" if i == 1 else "auto")
    tokens, accepted, engine = _run(model, spec, PROMPTS, capped, **kw)
    free = _run(model, spec, PROMPTS, lambda i: RequestParams(max_new_tokens=lengths[i], sampler="greedy"), **kw)
    assert tokens == free[0]
    assert max(accepted[0]) <= 1 and max(accepted[1]) > 1
    assert StepOption(3, 1, None) in engine.stats.steps_used  # d capped at 1 while request 0 ran
    assert all(o.budget is None for o in engine.stats.steps_used)
    for field, value, match in (("verify_length", 2, r"verify_length: .*\(1, 3\), got 2"),
                                ("verify_length", -1, "verify_length"), ("expert_budget", "yes", "expert_budget")):
        with pytest.raises(ZdiffError, match=match):
            engine.add(PROMPT, RequestParams(max_new_tokens=4, **{field: value}))
    dense = Engine(model, diffusion=spec.diffusion, max_slots=1, max_len=32, proposals=3)
    with pytest.raises(ZdiffError, match="expert_budget: 'on' needs"):
        dense.add(PROMPT, RequestParams(max_new_tokens=4, expert_budget="on"))


@pytest.mark.parametrize("kwargs, fragment", [(dict(verify_lengths=(4,)), "verify_lengths"),
                                              (dict(verify_lengths=()), "verify_lengths"),
                                              (dict(expert_budgets=(-1,)), "expert_budgets")])
def test_engine_refuses_bad_speculation_options(moe16, kwargs, fragment):
    model, spec = moe16
    with pytest.raises(ZdiffError, match=fragment):
        Engine(model, diffusion=spec.diffusion, max_slots=1, max_len=32, **kwargs)


def test_auto_policy_picks_verify_length_and_budget_from_cost_and_acceptance():
    """ZAYA1-8B on an H200 at batch 1: with the assumed acceptance the policy verifies fewer than b - 1 drafts with
    the budget on (the step reads ~4 experts per layer instead of ~16); when drafts are never accepted it runs AR;
    with the budget measured to ruin acceptance it keeps the budget off."""
    spec = load_spec("zaya1-8b")
    b = spec.diffusion.block_size
    policy = ProposalPolicy(spec, tuple(spec.diffusion.acceptance_levels), "auto", "h200")
    assert policy.verify_lengths == (1, 3, 7, 15) and policy.budgets == (None, 0)
    choice = policy.choose(1, 4096)
    assert choice.proposals >= 1 and choice.verify < b - 1 and choice.budget == 0
    assert policy.choose(1, 4096, budget_mode="off").budget is None
    assert policy.choose(1, 4096, max_verify=3).verify <= 3
    ruined = ProposalPolicy(spec, tuple(spec.diffusion.acceptance_levels), "auto", "h200")
    for _ in range(2000):
        ruined.observe(0, offered=3, budgeted=True)
    assert ruined.choose(1, 4096).budget is None
    forced = ruined.choose(1, 4096, budget_mode="on")  # a request that asks for the budget gets it (or AR)
    assert forced.budget == 0 or forced.proposals == 0
    hopeless = ProposalPolicy(spec, tuple(spec.diffusion.acceptance_levels), "auto", "h200")
    for _ in range(2000):
        hopeless.observe(0, offered=3)
        hopeless.observe(0, offered=3, budgeted=True)
    assert hopeless.choose(1, 4096) == StepOption(0, 0, None)
    report = policy.report()
    assert sum(s["steps"] for s in report["steps_used"]) == 3 and report["verify_lengths"] == [1, 3, 7, 15]


def test_a_truncated_step_tells_the_policy_nothing_about_the_slots_past_d():
    spec = load_spec("zaya1-tiny-moe16")
    policy = ProposalPolicy(spec, tuple(spec.diffusion.acceptance_levels), "auto", "h200")
    before = policy.slot_rates()
    policy.observe(2, offered=2, offset=1)  # slots 2 and 3 accepted; slots 4.. never verified
    after = policy.slot_rates()
    assert after[1] > before[1] and after[2] > before[2] and after[3:] == before[3:] and after[0] == before[0]
    policy.observe(0, offered=3, offset=0)  # slot 1 rejected; 2 and 3 not reached
    assert policy.slot_rates()[0] < after[0] and policy.slot_rates()[1:] == after[1:]


def test_truncated_budgeted_steps_draw_the_same_on_both_verifiers(moe16):
    """The keyed randomness with d = 1 and the budget on: the CPU engine (torch ops) and the engine over the fused
    verifier, draft sampler and step kernels (interpreter) give every seeded request the same tokens."""
    model, spec = moe16
    requests = [RequestParams(max_new_tokens=9, seed=s, **kw) for s, kw in enumerate([
        {}, dict(sampler="logit_mix", mix_weight=0.4, temperature=0.7), dict(top_k=4, top_p=0.9)])]
    runs = {}
    for verifier in ("torch", "fused"):
        engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=2, verify_lengths=(1,),
                        expert_budgets=(0,), verifier=verifier)
        ids = [engine.add([1 + i, 2, 3], p) for i, p in enumerate(requests)]
        results = engine.run()
        runs[verifier] = [results[i].tokens for i in ids]
        assert engine.stats.tokens_per_step[1] > 0 and engine.stats.tokens_per_step[2:] == [0, 0]
    assert runs["fused"] == runs["torch"]


def test_the_policy_hears_what_each_step_offered(moe16, monkeypatch):
    """The host's mirror of each request's drafts (`Engine._observe`) tells the policy exactly the drafts the device
    verified per step and the slot they start at: recorded at every launch from the device state, compared with
    what the policy was told, step by step, with truncated (d = 1) and full (d = 3) steps mixed."""
    from zdiff.generation import engine as engine_module

    model, spec = moe16
    b = spec.diffusion.block_size
    device_side, told = [], []
    step = engine_module.decode_step

    def recording(model, st, cache, shape, k):
        m = torch.where(st.active & st.tidar, st.num_drafts.clamp_max(shape.verify_rows - 1), 0)
        device_side.extend((int(m[s]), b - 1 - int(st.num_drafts[s])) for s in range(m.shape[0]) if m[s] > 0)
        return step(model, st, cache, shape, k)
    monkeypatch.setattr(engine_module, "decode_step", recording)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=64, proposals="auto",
                    verify_lengths=(1, 3), expert_budgets=(None,))
    observe = engine.policy.observe

    def listening(accepted, offered=None, offset=0, budgeted=False):
        told.append((offered, offset))
        return observe(accepted, offered, offset, budgeted)
    engine.policy.observe = listening
    for i, prompt in enumerate(PROMPTS):
        engine.add(prompt, RequestParams(max_new_tokens=14, sampler="greedy", verify_length=1 if i == 1 else 0))
    engine.run()
    assert told == device_side and len(told) > 5
    assert {offered for offered, _ in told} == {1, 2, 3}  # truncated and full steps both ran
