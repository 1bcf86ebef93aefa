"""The engine survives its own failures (an injected failing step: the error reaches the caller, the
requests in its slots end with finish_reason "error", the next requests run as on a fresh engine) and
refuses bad constructor arguments by name."""

import pytest
import torch

from generation_helpers import FailingForward, tiny_vocab_model
from zdiff.errors import ZdiffError
from zdiff.generation.engine import Engine, RequestParams, StepFailed

GREEDY = RequestParams(max_new_tokens=10, sampler="greedy", mode="tidar")
PROMPTS = [[1, 2, 3], [4, 5], [6, 1, 2, 0]]


def _fresh_tokens(model, spec, prompt):
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3)
    rid = engine.add(prompt, GREEDY)
    return engine.run()[rid].tokens


def test_a_failing_step_ends_the_requests_in_flight_and_the_engine_goes_on():
    model, spec = tiny_vocab_model(seed=1)
    expected = [_fresh_tokens(model, spec, p) for p in PROMPTS]
    failure = FailingForward(model)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=3)
    ids = [engine.add(p, GREEDY) for p in PROMPTS]  # two in slots, one queued
    for _ in range(3):
        engine.step()
    failure.armed = True
    with pytest.raises(StepFailed, match="injected failure") as caught:
        engine.step()
    assert caught.value.recovered
    ended = {e.request_id: e for e in caught.value.events if e.finished}
    assert set(ended) == set(ids[:2]) and {e.finish_reason for e in ended.values()} == {"error"}
    for rid, tokens in zip(ids[:2], expected):
        result = engine.result(rid)
        assert result.finish_reason == "error" and result.tokens == tokens[:len(result.tokens)]
    failure.armed = False
    results = engine.run()  # the queued request runs; nothing hangs
    assert results[ids[2]].tokens == expected[2] and results[ids[2]].finish_reason == "length"
    again = [engine.add(p, GREEDY) for p in PROMPTS[:2]]  # reused slots and caches: as on a fresh engine
    results = engine.run()
    assert [results[r].tokens for r in again] == expected[:2]


def test_a_failure_while_admitting_frees_the_slot():
    model, spec = tiny_vocab_model(seed=1)
    failure = FailingForward(model)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=1, max_len=32, proposals=3)
    failure.armed = True
    first = engine.add(PROMPTS[2], GREEDY)  # its prefill fails
    with pytest.raises(StepFailed):
        engine.run()
    assert engine.result(first).finish_reason == "error"
    failure.armed = False
    second = engine.add(PROMPTS[2], GREEDY)
    assert engine.run()[second].tokens == _fresh_tokens(model, spec, PROMPTS[2])


CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(max_slots=0), "max_slots must be an integer >= 1, got 0"),
    (dict(max_slots=1.5), "max_slots must be an integer >= 1, got 1.5"),
    (dict(max_slots=True), "max_slots must be an integer"),
    (dict(max_len=64.0), "max_len must be an integer >= 2, got 64.0"),
    (dict(prefill_chunk=0), "prefill_chunk must be an integer >= 1"),
    (dict(device="meta"), "device: the engine runs on cpu or cuda"),
    (dict(device="tpu"), "device: not a torch device"),
    (dict(device=3.5), "device: not a torch device"),
    pytest.param(dict(device="cuda"), "this torch sees no CUDA", marks=CPU_ONLY),
    (dict(target="tpu"), "target: must be one of"),
    (dict(verifier="magic"), "verifier must be one of"),
])
def test_engine_refuses_bad_arguments(kwargs, fragment):
    model, spec = tiny_vocab_model(seed=1)
    with pytest.raises(ZdiffError, match=fragment):
        Engine(model, diffusion=spec.diffusion, **(dict(max_slots=2, max_len=32) | kwargs))


@CPU_ONLY
def test_from_checkpoint_on_a_missing_gpu_is_one_line(tmp_path):
    with pytest.raises(ZdiffError, match="this torch sees no CUDA"):
        Engine.from_checkpoint(tmp_path, device="cuda")
