"""Generation: the cache equals brute force, greedy TiDAR equals greedy AR, and the samplers
are checked as the mathematical claims they are (goodness of fit against exact enumeration)."""

import pytest
import torch

from conftest import assert_close
from generation_helpers import (
    chi_square_p_value,
    counts_against,
    exact_ar_distribution,
    logit_mix_tables,
    tiny_vocab_model,
)
from zdiff.generation import SamplingParams
from zdiff.generation.oracle import DecodeCache, generate, sampling
from zdiff.generation.oracle import loop as loop_module
from zdiff.generation.oracle.loop import _Batch
from zdiff.pattern import decode_pattern, prefill_pattern
from zdiff.runtime import build_model
from zdiff.spec import load_spec

PROMPT = [1, 2, 3]
MASK = 7


def _brute(model, ids, pattern):
    return model(torch.tensor([ids]), positions=pattern.positions(), predecessors=pattern.predecessors(),
                 visible=pattern.dense_mask())[0, pattern.query_start:]


@pytest.mark.parametrize("name", ["zaya1-tiny", "qwen3-moe-tiny"])
def test_cached_steps_equal_brute_force_patterns(name):
    """Prefill, a step whose later rows are rejected, then another step: every logit equals a
    full forward over the brute-force pattern of the committed tokens (KV, conv and value state)."""
    spec = load_spec(name)
    model = build_model(spec.model, seed=5).eval()
    b, mask = spec.diffusion.block_size, spec.diffusion.mask_token_id
    prompts = [[256, 10, 11, 12, 13], [256, 40]]
    cache = DecodeCache(spec.model, 2, 64)
    batch = _Batch(model, cache, pad_id=mask, block_size=b)
    plans = [(p + [mask] * b, prefill_pattern(len(p), b)) for p in prompts]
    logits = batch.run(plans)
    for i, (ids, pattern) in enumerate(plans):
        assert_close(logits[i, : len(ids)], _brute(model, ids, pattern), rtol=1e-5, atol=1e-5, what=f"prefill {i}")
        cache.commit(i, list(range(len(prompts[i]))))
    committed = [p[:] for p in prompts]
    gen = torch.Generator().manual_seed(0)
    for step, accept in enumerate([(1, 0), (2, 3)]):
        plans = []
        for i in range(2):
            m = [5, 3][i] if step == 0 else [4, 5][i]
            levels = tuple(a for a in (0, 2, 4) if a <= m)
            row_ids = torch.randint(0, 256, (m + 1,), generator=gen).tolist() + [mask] * (b * len(levels))
            plans.append((row_ids, decode_pattern(cache.lengths[i], m, b, levels)))
        logits = batch.run(plans)
        for i, (row_ids, pattern) in enumerate(plans):
            brute = _brute(model, committed[i] + row_ids, pattern)
            assert_close(logits[i, : len(row_ids)], brute, rtol=1e-5, atol=1e-5, what=f"step {step} seq {i}")
            n = accept[i]
            cache.commit(i, list(range(n + 1)))  # c, d_1..d_n; the rest rolled back
            committed[i] += row_ids[: n + 1]
        assert cache.lengths == [len(c) for c in committed]


@pytest.mark.parametrize("verifier", ["reference", "fused"])
def test_greedy_tidar_equals_greedy_ar_on_ragged_batch(verifier):
    model, spec = tiny_vocab_model(seed=1)
    prompts = [[1, 2, 3, 4, 5], [6], [2, 2, 4, 1, 0, 3, 5, 6, 1]]
    greedy = SamplingParams(sampler="greedy")
    ar = generate(model, prompts, greedy, diffusion=spec.diffusion, mode="ar", max_new_tokens=15)
    td = generate(model, prompts, greedy, diffusion=spec.diffusion, mode="tidar", max_new_tokens=15, verifier=verifier)
    assert ar.tokens == td.tokens
    assert sum(map(sum, td.accepted)) > 0  # drafts were accepted: the commit paths ran
    assert sum(td.forward_passes) < sum(ar.forward_passes)
    for prompt, tokens in zip(prompts, ar.tokens):  # and AR itself equals full recomputation
        ids = torch.tensor([prompt])
        for _ in range(15):
            logits = model(ids)[:, -1]
            logits[:, MASK] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        assert ids[0, len(prompt):].tolist() == tokens


@pytest.fixture(scope="module")
def exact3():
    model, spec = tiny_vocab_model(seed=0)
    params = SamplingParams(sampler="lossless", banned=(MASK,))  # generate() bans the mask token too
    with torch.no_grad():
        return model, spec, exact_ar_distribution(model, PROMPT, 3, params)


N_SAMPLES = 4000


def test_lossless_tidar_matchesexact_ar_distribution(exact3):
    model, spec, table = exact3
    result = generate(model, [PROMPT] * N_SAMPLES, SamplingParams(sampler="lossless"), diffusion=spec.diffusion,
                      mode="tidar", max_new_tokens=3, seed=11)
    assert sum(result.forward_passes) < 3 * N_SAMPLES  # drafts really were accepted
    counts, probs = counts_against(result.tokens, table)
    assert chi_square_p_value(counts, probs) > 1e-3


@pytest.mark.parametrize("broken", ["accept_all", "resample_from_p"])
def test_the_exactness_test_rejects_broken_acceptance_rules(exact3, monkeypatch, broken):
    """Power: the same test must fail for plausible bugs in the verifier."""
    model, spec, table = exact3

    def accept_all(target, q, drafts, uniforms, gumbel):
        m = drafts.shape[0]
        return m, int(sampling.gumbel_argmax(target[m], gumbel[m]))

    def resample_from_p(target, q, drafts, uniforms, gumbel):
        for i in range(drafts.shape[0]):
            d = int(drafts[i])
            if uniforms[i] * q[i, d] >= target[i, d]:
                return i, int(sampling.gumbel_argmax(target[i], gumbel[i]))  # p instead of max(0, p - q)
        m = drafts.shape[0]
        return m, int(sampling.gumbel_argmax(target[m], gumbel[m]))

    verifiers = {"accept_all": accept_all, "resample_from_p": resample_from_p}
    monkeypatch.setattr(loop_module, "verify_stochastic", verifiers[broken])
    result = generate(model, [PROMPT] * N_SAMPLES, SamplingParams(sampler="lossless"), diffusion=spec.diffusion,
                      mode="tidar", max_new_tokens=3, seed=11)
    counts, probs = counts_against(result.tokens, table)
    assert chi_square_p_value(counts, probs) < 1e-6


def test_logit_mix_matches_its_mixed_target():
    """Two new tokens: c from the AR distribution, then x_1 verified against
    softmax(w z_AR + (1-w) z_draft) with z_draft the prefill block's slot 1: exact, enumerable."""
    model, spec = tiny_vocab_model(seed=2)
    w = 0.3
    params = SamplingParams(sampler="logit_mix", mix_weight=w, banned=(MASK,))
    with torch.no_grad():
        mixed, plain = logit_mix_tables(model, PROMPT, w, params, spec.diffusion.block_size, MASK)
    result = generate(model, [PROMPT] * N_SAMPLES, params, diffusion=spec.diffusion, mode="tidar",
                      max_new_tokens=2, seed=5)
    counts, probs = counts_against(result.tokens, mixed)
    assert chi_square_p_value(counts, probs) > 1e-3
    counts, probs = counts_against(result.tokens, plain)
    assert chi_square_p_value(counts, probs) < 1e-6  # and it is not the lossless distribution


def test_logit_mix_with_weight_one_is_lossless_draw_for_draw():
    model, spec = tiny_vocab_model(seed=3)
    kw = dict(diffusion=spec.diffusion, mode="tidar", max_new_tokens=8, seed=42)
    a = generate(model, [PROMPT, [4, 5]] * 20, SamplingParams(sampler="lossless"), **kw)
    b = generate(model, [PROMPT, [4, 5]] * 20, SamplingParams(sampler="logit_mix", mix_weight=1.0), **kw)
    assert a.tokens == b.tokens and a.accepted == b.accepted


def test_fused_verifier_in_the_loop_samples_plausibly():
    """A sampled run through the fused verifier: valid tokens, drafts accepted, within the budget."""
    model, spec = tiny_vocab_model(seed=0)
    result = generate(model, [PROMPT] * 6, SamplingParams(), diffusion=spec.diffusion, max_new_tokens=6,
                      verifier="fused", seed=2)
    assert all(len(t) == 6 and MASK not in t and all(0 <= x < 8 for x in t) for t in result.tokens)
    assert sum(map(sum, result.accepted)) > 0


def test_stop_tokens_and_max_length():
    model, spec = tiny_vocab_model(seed=1)
    result = generate(model, [PROMPT] * 30, SamplingParams(), diffusion=spec.diffusion, max_new_tokens=9,
                      stop_tokens=(0,), seed=3)
    for tokens in result.tokens:
        assert 1 <= len(tokens) <= 9
        assert 0 not in tokens[:-1] and (tokens[-1] == 0 or len(tokens) == 9)
        assert MASK not in tokens
    assert any(t[-1] == 0 for t in result.tokens)


def test_top_k_top_p_processing():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    p = sampling.probabilities(logits, SamplingParams(top_k=2))
    assert (p[0, [1, 2, 3]] == 0).all() and p[0, [0, 4]].sum() == pytest.approx(1.0)
    full = torch.softmax(logits, -1)[0]
    p = sampling.probabilities(logits, SamplingParams(top_p=0.8))
    kept = (p[0] > 0).nonzero().flatten().tolist()
    assert kept == [0, 4] and full[4] < 0.8 <= full[4] + full[0]
    p = sampling.probabilities(logits, SamplingParams(banned=(4,), temperature=0.5))
    assert p[0, 4] == 0 and p[0, 0] == pytest.approx(torch.softmax(logits[0, :4] / 0.5, -1)[0].item())
