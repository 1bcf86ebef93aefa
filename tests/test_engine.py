"""The decode engine against the host-driven loop (the oracle): greedy token for token, the
stochastic samplers as exact distributions (with power checks), per-request reproducibility,
continuous batching, and a step that never synchronises with the host. Both verifiers: the torch
ops and the fused Triton kernels (in the interpreter on a CPU; the exact-distribution runs of the
fused verifier need thousands of requests and are `gpu` tests, its statistics are checked at the
kernel level in test_verifier_kernel.py)."""

import copy

import pytest
import torch
from sync_guard import HostSyncError, no_host_sync

from generation_helpers import (
    chi_square_p_value,
    counts_against,
    exact_ar_distribution,
    logit_mix_tables,
    tiny_vocab_model,
)
from zdiff.errors import ZdiffError
from zdiff.generation import SamplingParams, batched_sampling, decode_step, verify
from zdiff.generation import engine as engine_module
from zdiff.generation.engine import Engine, RequestParams, StepFailed
from zdiff.generation.oracle import generate
from zdiff.runtime import build_model
from zdiff.spec import load_spec

PROMPT = [1, 2, 3]
MASK = 7
N_SAMPLES = 4000
VERIFIERS = ["torch", pytest.param("fused", marks=pytest.mark.gpu)]  # fused exact-distribution runs: a GPU


def _engine_tokens(model, diffusion, prompts, params, slots, **kw):
    engine = Engine(model, diffusion=diffusion, max_slots=slots, max_len=64, **kw)
    ids = [engine.add(p, params) for p in prompts]
    results = engine.run()
    return [results[i].tokens for i in ids], engine


@pytest.mark.parametrize("mode", ["ar", "tidar"])
def test_greedy_engine_equals_reference_loop_with_refills(mode):
    """Ragged prompts, fewer slots than requests (slots are refilled mid-run), fixed P = 3."""
    model, spec = tiny_vocab_model(seed=1)
    prompts = [[1, 2, 3, 4, 5], [6], [2, 2, 4, 1, 0, 3, 5, 6, 1], [3, 3], [5, 1, 2]]
    ref = generate(model, prompts, SamplingParams(sampler="greedy"), diffusion=spec.diffusion, mode=mode,
                   max_new_tokens=13)
    tokens, engine = _engine_tokens(model, spec.diffusion, prompts,
                                    RequestParams(max_new_tokens=13, sampler="greedy", mode=mode), slots=2, proposals=3)
    assert tokens == ref.tokens
    if mode == "tidar":
        assert sum(engine.stats.tokens_per_step[1:]) > 0  # drafts were accepted: the commit paths ran
        assert engine.stats.steps < 13 * len(prompts) / 2


def test_greedy_engine_with_the_fused_verifier_equals_reference_loop():
    """The Triton verifier inside the step (interpreter): ragged prompts, refilled slots, AR and TiDAR
    requests in one batch with per-slot samplers."""
    model, spec = tiny_vocab_model(seed=1)
    prompts = [[1, 2, 3, 4, 5], [6], [2, 2, 4, 1, 0, 3, 5, 6, 1], [3, 3]]
    greedy = SamplingParams(sampler="greedy")
    refs = {mode: generate(model, prompts, greedy, diffusion=spec.diffusion, mode=mode, max_new_tokens=11).tokens
            for mode in ("tidar", "ar")}
    engine = Engine(model, diffusion=spec.diffusion, max_slots=3, max_len=64, proposals=3, verifier="fused")
    ids = {(mode, i): engine.add(p, RequestParams(max_new_tokens=11, sampler="greedy", mode=mode))
           for i, p in enumerate(prompts) for mode in ("tidar", "ar")}
    results = engine.run()
    for mode, ref in refs.items():
        assert [results[ids[mode, i]].tokens for i in range(len(prompts))] == ref, mode
    assert sum(engine.stats.tokens_per_step[1:]) > 0  # drafts were accepted: the walk and commit paths ran


@pytest.mark.parametrize("name", ["zaya1-tiny", "qwen3-moe-tiny", "dense-tiny"])
def test_greedy_engine_equals_reference_loop_on_presets(name):
    """Both attention kinds (CCGQA with its conv state, plain GQA), AR and TiDAR requests mixed in
    one batch, a prompt longer than the prefill chunk."""
    spec = load_spec(name)
    model = build_model(spec.model, seed=3).eval()
    prompts = [[256, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [256, 40], [256, 99, 98]]
    greedy = SamplingParams(sampler="greedy")
    ref_tidar = generate(model, prompts, greedy, diffusion=spec.diffusion, mode="tidar", max_new_tokens=10)
    ref_ar = generate(model, prompts, greedy, diffusion=spec.diffusion, mode="ar", max_new_tokens=10)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=4, max_len=64, proposals=2, prefill_chunk=4)
    ids = [engine.add(p, RequestParams(max_new_tokens=10, sampler="greedy", mode=m))
           for p in prompts for m in ("tidar", "ar")]
    results = engine.run()
    assert [results[i].tokens for i in ids[0::2]] == ref_tidar.tokens
    assert [results[i].tokens for i in ids[1::2]] == ref_ar.tokens


@pytest.fixture(scope="module")
def exact3():
    model, spec = tiny_vocab_model(seed=0)
    with torch.no_grad():
        table = exact_ar_distribution(model, PROMPT, 3, SamplingParams(sampler="lossless", banned=(MASK,)))
    return model, spec, table


def _sampled(model, spec, params, proposals=3, n=N_SAMPLES, length=3, verifier="torch"):
    if verifier == "fused":
        model = copy.deepcopy(model).cuda()
    engine = Engine(model, diffusion=spec.diffusion, max_slots=1000, max_len=16, proposals=proposals,
                    verifier=verifier)
    ids = [engine.add(PROMPT, RequestParams(max_new_tokens=length, seed=11 + i, **params)) for i in range(n)]
    results = engine.run()
    return [results[i].tokens for i in ids], engine


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_lossless_engine_matches_exact_ar_distribution(exact3, verifier):
    model, spec, table = exact3
    tokens, engine = _sampled(model, spec, {}, verifier=verifier)
    assert sum(engine.stats.tokens_per_step[1:]) > 0.2 * sum(engine.stats.tokens_per_step)  # drafts were accepted
    assert chi_square_p_value(*counts_against(tokens, table)) > 1e-3


@pytest.fixture(scope="module")
def exact3_dense():
    """A dense model (GQA + SwiGLU MLP); its smaller init (std 0.15) keeps drafts accepted."""
    model, spec = tiny_vocab_model(seed=0, dense=True, std=0.15)
    with torch.no_grad():
        table = exact_ar_distribution(model, PROMPT, 3, SamplingParams(sampler="lossless", banned=(MASK,)))
    return model, spec, table


def test_lossless_engine_matches_exact_ar_distribution_on_a_dense_model(exact3_dense):
    model, spec, table = exact3_dense
    tokens, engine = _sampled(model, spec, {})
    assert sum(engine.stats.tokens_per_step[1:]) > 0.2 * sum(engine.stats.tokens_per_step)  # drafts were accepted
    assert chi_square_p_value(*counts_against(tokens, table)) > 1e-3


@pytest.mark.parametrize("models, broken", [("exact3", "accept_all"), ("exact3", "resample_from_p"),
                                            ("exact3_dense", "accept_all")])
def test_the_engine_exactness_test_rejects_broken_verifiers(request, models, monkeypatch, broken):
    """Power: the same test fails for plausible verifier bugs injected into the engine's step."""
    model, spec, table = request.getfixturevalue(models)
    verify_slots = verify.verify_slots

    def target(ar_logits, rest, banned):
        _, temperature, top_k, top_p, _, _, _, filtered = rest
        z = batched_sampling.process_logits(ar_logits, temperature, top_k, top_p, banned, filtered)
        return torch.softmax(z, -1)

    def accept_all(backend, ar_logits, draft_logits, drafts, num_drafts, first_position, *rest, banned=None):
        n, _ = verify_slots(backend, ar_logits, draft_logits, drafts, num_drafts, first_position, *rest, banned=banned)
        # keep every draft and draw the bonus token from p_m
        m = num_drafts
        forced = torch.where(m > 0, m, n)
        p = target(ar_logits, rest, banned)
        row = p.gather(1, forced[:, None, None].expand(-1, 1, p.shape[-1]))[:, 0]
        return forced, torch.multinomial(row, 1)[:, 0]

    def resample_from_p(backend, ar_logits, draft_logits, drafts, num_drafts, first_position, *rest, banned=None):
        # a rejection redraws from p instead of max(0, p - q): same as verifying with q = 0 at the resample
        n, token = verify_slots(backend, ar_logits, draft_logits, drafts, num_drafts, first_position, *rest,
                                banned=banned)
        p = target(ar_logits, rest, banned)
        row = p.gather(1, n[:, None, None].expand(-1, 1, p.shape[-1]))[:, 0]
        return n, torch.where(n < num_drafts, torch.multinomial(row, 1)[:, 0], token)

    broken_verifiers = {"accept_all": accept_all, "resample_from_p": resample_from_p}
    monkeypatch.setattr(decode_step, "verify_slots", broken_verifiers[broken])
    tokens, _ = _sampled(model, spec, {})
    assert chi_square_p_value(*counts_against(tokens, table)) < 1e-6


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_logit_mix_engine_matches_its_mixed_target(verifier):
    """Two new tokens: x_1 from p (the first step has no drafts), then x_2 verified against
    softmax(w z_AR + (1-w) z_draft) where z_draft is slot 1 of the first step's level-0 block, which
    saw the prompt only (DESIGN's prefill block): exact, enumerable. And not the lossless distribution."""
    model, spec = tiny_vocab_model(seed=2)
    w = 0.3
    params = SamplingParams(sampler="logit_mix", mix_weight=w, banned=(MASK,))
    with torch.no_grad():
        mixed, plain = logit_mix_tables(model, PROMPT, w, params, spec.diffusion.block_size, MASK)
    tokens, _ = _sampled(model, spec, {"sampler": "logit_mix", "mix_weight": w}, length=2, verifier=verifier)
    assert chi_square_p_value(*counts_against(tokens, mixed)) > 1e-3
    assert chi_square_p_value(*counts_against(tokens, plain)) < 1e-6


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_top_k_top_p_engine_matches_exact_filtered_distribution(verifier):
    """Lossless with top-k and top-p: the output is distributed as AR sampling from the filtered p."""
    model, spec = tiny_vocab_model(seed=4)
    filt = dict(top_k=4, top_p=0.85, temperature=0.9)
    with torch.no_grad():
        table = exact_ar_distribution(model, PROMPT, 3, SamplingParams(sampler="lossless", banned=(MASK,), **filt))
        unfiltered = exact_ar_distribution(model, PROMPT, 3, SamplingParams(sampler="lossless", banned=(MASK,),
                                                                           temperature=0.9))
    tokens, engine = _sampled(model, spec, filt, verifier=verifier)
    assert sum(engine.stats.tokens_per_step[1:]) > 0
    assert chi_square_p_value(*counts_against(tokens, table)) > 1e-3
    assert chi_square_p_value(*counts_against([t for t in tokens], unfiltered)) < 1e-6


def test_a_seeded_stochastic_request_gives_the_same_tokens_on_both_verifiers():
    """One randomness scheme: the CPU engine (torch backend) and the engine over the fused kernels (interpreter)
    give every seeded request the same tokens, for every sampler, top-k / top-p included, TiDAR and AR, in one
    batch with refills."""
    model, spec = tiny_vocab_model(seed=2)
    requests = [RequestParams(max_new_tokens=10, seed=s, **kw) for s, kw in enumerate([
        {}, dict(sampler="logit_mix", mix_weight=0.4, temperature=0.7), dict(sampler="greedy"),
        dict(top_k=4, top_p=0.9), dict(mode="ar", temperature=1.3)])]
    runs = {}
    for verifier in ("torch", "fused"):
        engine = Engine(model, diffusion=spec.diffusion, max_slots=3, max_len=64, proposals=2, verifier=verifier)
        ids = [engine.add([1 + i, 2, 3], p) for i, p in enumerate(requests)]
        results = engine.run()
        runs[verifier] = [results[i].tokens for i in ids]
        assert sum(engine.stats.tokens_per_step[1:]) > 0  # drafts were accepted: the walk and the draft draws ran
    assert runs["fused"] == runs["torch"]
    reseeded = Engine(model, diffusion=spec.diffusion, max_slots=3, max_len=64, proposals=2)
    rid = reseeded.add([1, 2, 3], RequestParams(max_new_tokens=10, seed=99))
    assert reseeded.run()[rid].tokens != runs["torch"][0]  # the seed matters: the comparison can fail


@pytest.mark.parametrize("verifier", ["torch", "fused"])
def test_a_requests_draws_do_not_depend_on_its_slot_or_neighbours(verifier):
    model, spec = tiny_vocab_model(seed=5)
    probe = RequestParams(max_new_tokens=12, seed=1234, top_k=5)
    alone, _ = _engine_tokens(model, spec.diffusion, [PROMPT], probe, slots=1, verifier=verifier)
    others = [RequestParams(max_new_tokens=n, seed=s, sampler=k) for n, s, k in
              [(5, 1, "lossless"), (9, 2, "logit_mix"), (3, 3, "greedy"), (12, 4, "lossless")]]
    engine = Engine(model, diffusion=spec.diffusion, max_slots=3, max_len=64, verifier=verifier)
    for params in others[:3]:
        engine.add([4, 5, 6], params)
    rid = engine.add(PROMPT, probe)  # queued: it enters whichever slot frees first, mid-run
    engine.add([1], others[3])
    results = engine.run()
    assert results[rid].tokens == alone[0]


def test_stop_tokens_length_and_cancel():
    model, spec = tiny_vocab_model(seed=1)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=4, max_len=64)
    ids = [engine.add(PROMPT, RequestParams(max_new_tokens=9, stop_tokens=(0,), seed=s)) for s in range(30)]
    victim = engine.add(PROMPT, RequestParams(max_new_tokens=40, seed=99))
    events = []
    while engine.has_work():
        events += engine.step()
        if engine.result(ids[-1]) is not None and engine.result(victim) is None:
            engine.cancel(victim)
    results = {i: engine.result(i) for i in ids}
    for r in results.values():
        assert 1 <= len(r.tokens) <= 9 and MASK not in r.tokens
        assert 0 not in r.tokens[:-1] and (r.tokens[-1] == 0) == (r.finish_reason == "stop")
        assert r.finish_reason == "stop" or len(r.tokens) == 9
    assert any(r.finish_reason == "stop" for r in results.values())
    assert engine.result(victim).finish_reason == "cancelled"
    for rid in ids:  # the events of a request concatenate to its tokens, finished exactly once
        mine = [e for e in events if e.request_id == rid]
        assert sum((e.tokens for e in mine), []) == results[rid].tokens
        assert [e.finished for e in mine].count(True) == 1 and mine[-1].finished


@pytest.mark.parametrize("verifier", ["torch", "fused"])
def test_the_step_never_synchronises_with_the_host(monkeypatch, verifier):
    model, spec = tiny_vocab_model(seed=1)
    guarded_step = decode_step.decode_step
    also = []  # every zdiff module is watched; the second half adds this test module

    def checked(*args, **kwargs):
        with no_host_sync(tuple(also)):
            return guarded_step(*args, **kwargs)

    monkeypatch.setattr(engine_module, "decode_step", checked)
    kinds = [dict(sampler="lossless"), dict(sampler="greedy"), dict(sampler="logit_mix", mix_weight=0.5),
             dict(sampler="lossless", top_k=3, top_p=0.9, mode="ar")]
    engine = Engine(model, diffusion=spec.diffusion, max_slots=4, max_len=64, verifier=verifier)
    for i, kw in enumerate(kinds):
        engine.add(PROMPT, RequestParams(max_new_tokens=8, seed=i, **kw))
    engine.run()
    assert engine.stats.eager_steps > 3
    # a verify length below b - 1 and the draft expert budget (the options of MoE-aware TiDAR), under the same guard
    budgeted = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=64, verifier=verifier, proposals=2,
                      verify_lengths=(1,), expert_budgets=(0,))
    for i, kw in enumerate(kinds[:2]):
        budgeted.add(PROMPT, RequestParams(max_new_tokens=8, seed=i, **kw))
    budgeted.run()
    assert {(o.verify, o.budget) for o in budgeted.stats.steps_used} == {(1, 0)}
    if verifier == "fused":
        return

    # and the guard has teeth: a sync in guarded code (here this test module's) is caught
    also.append(__name__)

    def syncing(*args, **kwargs):
        n, token = verify.verify_slots(*args, **kwargs)
        int(n.sum())
        return n, token

    monkeypatch.setattr(decode_step, "verify_slots", syncing)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=64)
    engine.add(PROMPT, RequestParams(max_new_tokens=4))
    with pytest.raises(StepFailed, match="__int__") as failed:  # the engine ends the request, then re-raises
        engine.run()
    assert isinstance(failed.value.__cause__, HostSyncError)


@pytest.mark.parametrize("field,value,match", [
    ("max_new_tokens", 0, "max_new_tokens"), ("max_new_tokens", 88, "exceeds the engine's max_len"),
    ("sampler", "beam", "sampler"), ("temperature", float("nan"), "temperature"), ("temperature", 0.0, "temperature"),
    ("top_k", -1, "top_k"), ("top_p", 0.0, "top_p"), ("top_p", 1.5, "top_p"), ("mix_weight", 2.0, "mix_weight"),
    ("seed", -1, "seed"), ("mode", "beam", "mode"), ("stop_tokens", (9,), "stop_tokens"),
])
def test_bad_requests_are_refused_with_the_field(field, value, match):
    model, spec = tiny_vocab_model(seed=1)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=1, max_len=90)
    with pytest.raises(ZdiffError, match=match):
        engine.add(PROMPT, RequestParams(**{field: value}))
    for prompt, match in (([], "at least one"), ([8], r"\[0, 8\)"), ([-1], r"\[0, 8\)"), ([MASK], "mask token")):
        with pytest.raises(ZdiffError, match=match):
            engine.add(prompt, RequestParams())
    assert not engine.has_work()


def test_an_engine_that_cannot_fit_is_refused_with_numbers():
    model, spec = tiny_vocab_model(seed=1)
    with pytest.raises(ZdiffError, match=r"max_slots=100000, max_len=100000000: the engine needs about .* GiB"):
        Engine(model, diffusion=spec.diffusion, max_slots=100_000, max_len=100_000_000)


def test_auto_policy_follows_acceptance_and_reports():
    """With the cost model of an H200 at batch 1 (memory bound), high acceptance buys proposal
    blocks and zero acceptance falls back to AR (P = 0); the engine reports what it chose."""
    from zdiff.generation.proposals import ProposalPolicy

    spec = load_spec("zaya1-8b")
    levels = spec.diffusion.acceptance_levels
    good = ProposalPolicy(spec, levels, "auto", "h200")
    for _ in range(500):
        good.observe(spec.diffusion.block_size - 1)
    bad = ProposalPolicy(spec, levels, "auto", "h200")
    for _ in range(500):
        bad.observe(0)
    assert good.choose(1, 4096).proposals >= 1
    assert bad.choose(1, 4096).proposals == 0
    model, tiny = tiny_vocab_model(seed=1)
    _, engine = _engine_tokens(model, tiny.diffusion, [PROMPT] * 3, RequestParams(max_new_tokens=10), slots=3)
    report = engine.policy.report()
    assert report["policy"] == "auto" and sum(report["proposals_used"].values()) == engine.stats.steps
