"""Step shapes, slot buckets and compaction of the decode engine (CPU), the capture-failure error, and the graph
path itself on a GPU: every shape captured at construction, replayed, and token for token the eager engine."""

import contextlib

import pytest
import torch

from conftest import DEVICE
from generation_helpers import tiny_vocab_model
from zdiff.errors import GraphCaptureError
from zdiff.generation import SamplingParams
from zdiff.generation.decode_step import StepShape
from zdiff.generation.engine import Engine, RequestParams
from zdiff.generation.oracle import generate
from zdiff.generation.proposals import StepOption
from zdiff.generation.step_graphs import bucket, capture, slot_buckets, step_shapes


def test_buckets_and_the_shapes_an_engine_can_launch():
    assert [bucket(n, 6) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    assert slot_buckets(6) == [6, 4, 2, 1] and slot_buckets(1) == [1] and slot_buckets(8) == [8, 4, 2, 1]
    shapes = step_shapes(6, 4, [StepOption(p, 3 if p else 0, None) for p in (0, 1, 2)], StepShape)
    assert len(shapes) == len(set(shapes)) == 4 * 2 * 3 * 2
    assert {(s.verify_rows, s.proposals) for s in shapes} == {(v, p) for v in (1, 4) for p in (0, 1, 2)}
    sizes = [s.slots * s.rows for s in shapes]
    assert sizes == sorted(sizes, reverse=True)  # largest first: the smaller graphs reuse the pool
    # verify lengths 1 and 3, the budget on and off for P = 1: AR steps verify 0, 1 or 3 drafts, without a budget
    options = [StepOption(0, 0, None)] + [StepOption(1, d, m) for d in (1, 3) for m in (None, 0)]
    kinds = {(s.verify_rows, s.proposals, s.budget) for s in step_shapes(2, 4, options, StepShape)}
    assert kinds == {(1, 0, None), (2, 0, None), (4, 0, None)} | {(v, 1, m) for v in (1, 2, 4) for m in (None, 0)}
    ar_only = step_shapes(8, 1, [StepOption(0, 0, None)], StepShape)
    assert {(s.slots, s.verify_rows, s.proposals) for s in ar_only} == {(n, 1, 0) for n in (8, 4, 2, 1)}


def _launched_shapes(engine):
    """Wrap the engine's eager step: record (shape, occupied slots) of every launch."""
    launched, run = [], engine._run_step

    def recording(shape):
        launched.append((shape, [s for s, rid in enumerate(engine._slots) if rid is not None]))
        return run(shape)
    engine._run_step = recording
    return launched


@pytest.mark.parametrize("proposals", ["auto", 2])
def test_every_launched_shape_is_captured_and_its_bucket_follows_the_requests(proposals):
    """Requests finish at different times with fewer slots than requests; AR and TiDAR, greedy, seeded and
    top-k requests mixed: each step's shape is one `step_shapes` lists, its occupied slots are [0, n) (holes are
    compacted) and its bucket is the bucket of n."""
    model, spec = tiny_vocab_model(seed=1)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=5, max_len=64, proposals=proposals)
    launched = _launched_shapes(engine)
    lengths = [3, 14, 5, 9, 2, 11, 4, 7]
    for i, n in enumerate(lengths):
        kind = [dict(sampler="greedy"), dict(seed=i), dict(seed=i, top_k=3, mode="ar")][i % 3]
        engine.add([1 + i % 4, 2, 3], RequestParams(max_new_tokens=n, **kind))
    engine.run()
    captured = set(engine.step_shapes())
    assert launched and all(shape in captured for shape, _ in launched)
    for shape, occupied in launched:
        assert occupied == list(range(len(occupied))) and shape.slots == bucket(len(occupied), 5), (shape, occupied)
    assert engine.stats.slot_moves > 0  # requests really were moved into holes
    assert len({shape.slots for shape, _ in launched}) > 1  # the bucket shrank as requests finished


def test_compaction_keeps_every_request_s_tokens():
    """Greedy TiDAR requests of different lengths, moved between slots as others finish, give the reference
    loop's tokens; a seeded stochastic request gives the tokens it gives alone (draws are keyed on the
    request, not its slot)."""
    model, spec = tiny_vocab_model(seed=1)
    prompts, lengths = [[1, 2, 3, 4], [6], [2, 2, 4, 1], [3, 3], [5, 1, 2], [4]], [2, 12, 3, 10, 4, 9]
    engine = Engine(model, diffusion=spec.diffusion, max_slots=4, max_len=64, proposals=2)
    ids = [engine.add(p, RequestParams(max_new_tokens=n, sampler="greedy")) for p, n in zip(prompts, lengths)]
    probe = engine.add([1, 2, 3], RequestParams(max_new_tokens=12, seed=5))
    results = engine.run()
    assert engine.stats.slot_moves > 0
    for rid, prompt, n in zip(ids, prompts, lengths):
        ref = generate(model, [prompt], SamplingParams(sampler="greedy"), diffusion=spec.diffusion, mode="tidar",
                       max_new_tokens=n)
        assert results[rid].tokens == ref.tokens[0], (prompt, n)
    alone = Engine(model, diffusion=spec.diffusion, max_slots=1, max_len=64, proposals=2)
    rid = alone.add([1, 2, 3], RequestParams(max_new_tokens=12, seed=5))
    assert alone.run()[rid].tokens == results[probe].tokens


def test_a_request_moved_while_its_last_step_is_in_flight_frees_its_new_slot():
    """AR steps deliver one token each: A finishes in step 1, which frees slot 0 when step 1's packet is read
    (during step 2); B is then moved into slot 0 while step 2, its last, is in flight. Reading step 2's packet
    (which names slot 1) must free slot 0, where B is now."""
    model, spec = tiny_vocab_model(seed=1)
    engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=64)
    a = engine.add([1, 2, 3], RequestParams(max_new_tokens=1, sampler="greedy", mode="ar"))
    b = engine.add([4, 5], RequestParams(max_new_tokens=2, sampler="greedy", mode="ar"))
    for _ in range(10):
        if not engine.has_work():
            break
        engine.step()
    assert not engine.has_work() and engine._slots == [None, None]
    assert engine.stats.slot_moves == 1
    assert len(engine.result(a).tokens) == 1 and len(engine.result(b).tokens) == 2


def test_a_capture_failure_is_an_error_naming_the_shape_and_the_op():
    shape = StepShape(slots=4, verify_rows=8, proposals=2, filtered=False, block_size=8)

    @contextlib.contextmanager
    def graph_context(graph, pool=None):
        yield

    def run(shape):
        torch.nonzero(torch.arange(5))  # what a graph cannot capture: an output sized on the host
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(GraphCaptureError) as error:
        capture(shape, run, pool=None, graph_type=object, graph_context=graph_context)
    message = str(error.value)
    assert "slots=4" in message and "proposals=2" in message and "aten.nonzero" in message
    assert "operation not permitted" in message and "graphs=False" in message


@pytest.mark.gpu
def test_a_graphed_engine_captures_every_shape_up_front_and_matches_eager():
    """Fails on any capture failure (construction raises GraphCaptureError)."""
    model, spec = tiny_vocab_model(seed=1)
    model = model.to(DEVICE)
    runs = {}
    for graphs in (True, False):
        engine = Engine(model, diffusion=spec.diffusion, max_slots=4, max_len=64, proposals="auto", graphs=graphs)
        if graphs:
            assert set(engine._graphs) == set(engine.step_shapes())
        ids = [engine.add([1 + i, 2, 3], RequestParams(max_new_tokens=3 + 2 * i, seed=i,
                                                        sampler="greedy" if i % 2 else "lossless"))
               for i in range(7)]
        results = engine.run()
        runs[graphs] = [results[i].tokens for i in ids]
        if graphs:
            assert engine.stats.eager_steps == 0 and engine.stats.graph_replays == engine.stats.steps > 0
    assert runs[True] == runs[False]
